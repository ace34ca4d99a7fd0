"""optimizers.py: the fused Adam update against Keras' own; gradient accumulation over chunks against a whole batch."""
import keras
import numpy as np
import tensorflow as tf

from model import Memory
from optimizers import FusedAdam, summed_over_chunks


def test_fused_adam_matches_keras_adam_with_schedule_and_clipping():
    rng = np.random.default_rng(0)
    initial = [rng.normal(size=(5, 3)).astype("float32"), rng.normal(size=(7,)).astype("float32")]
    gradients = [[rng.normal(size=value.shape).astype("float32") for value in initial] for _ in range(6)]
    gradients[2][0] = tf.IndexedSlices(tf.constant(gradients[2][0][:2]), tf.constant([0, 3]), tf.constant([5, 3]))
    finals = {}
    for optimizer_class in (keras.optimizers.Adam, FusedAdam):
        variables = [keras.Variable(value) for value in initial]
        schedule = keras.optimizers.schedules.CosineDecay(0.0, 10, warmup_target=0.1, warmup_steps=3)
        optimizer = optimizer_class(schedule, global_clipnorm=1.0)
        optimizer.build(variables)
        step = tf.function(lambda grads: optimizer.apply(grads, variables))
        for grads in gradients:
            step(grads)
        finals[optimizer_class] = [variable.numpy() for variable in variables]
    for keras_value, fused_value, start in zip(*finals.values(), initial):
        assert np.abs(keras_value - start).max() > 0.1  # The updates moved the weights ...
        np.testing.assert_allclose(fused_value, keras_value, rtol=1e-5, atol=1e-5)  # ... alike.


def test_summed_over_chunks_gives_the_whole_batchs_sum_memory_and_gradients():
    """A toy step (an embedding, a dense weight, a memory that adds the rows, a per-step draw from a seed) run in
    2 and 4 chunks against the whole batch: the same total, memory rows in order, gradients (the embedding's still
    rows of IndexedSlices) and one draw a step."""
    rng = np.random.default_rng(0)
    embedding, weight = tf.Variable(rng.normal(size=(10, 3)), dtype=tf.float32), tf.Variable([1.0, -2.0, 0.5])
    seed = tf.Variable([0, 3], dtype=tf.int64)  # A seed generator's state: next() reads it, then adds [0, 1].
    inputs = tf.constant(rng.integers(0, 10, (4, 5)), tf.int32)
    targets = tf.constant(rng.normal(size=(4, 5)), tf.float32)
    memory = Memory(tf.constant(rng.normal(size=(2, 4, 5, 3)), tf.float32), tf.constant(0))

    def chunk_step(inputs, targets, memory):
        with tf.GradientTape() as tape:
            draw = tf.cast(seed[1], tf.float32)
            seed.assign_add([0, 1])
            rows = tf.gather(embedding, inputs) * draw  # [b, T, 3]
            value = tf.reduce_sum((tf.linalg.matvec(rows, weight) - targets) ** 2)
        return value, memory._replace(states=memory.states + rows), tape.gradient(value, [embedding, weight])

    results = {}
    for chunks in (1, 2, 4):
        seed.assign([0, 3])
        step = tf.function(lambda: summed_over_chunks(chunk_step, chunks, inputs, targets, memory, replayed=[seed]))
        total, new_memory, (embedding_gradient, weight_gradient) = step()
        assert isinstance(embedding_gradient, tf.IndexedSlices) and seed.numpy().tolist() == [0, 4]
        results[chunks] = [total, new_memory.states, tf.convert_to_tensor(embedding_gradient), weight_gradient]
    np.testing.assert_allclose(results[1][1], memory.states + 3 * tf.gather(embedding, inputs))  # The toy is as meant.
    for chunks in (2, 4):
        for actual, expected in zip(results[chunks], results[1]):
            np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)
