"""optimizers.py: the fused Adam update against Keras' own."""
import keras
import numpy as np
import tensorflow as tf

from optimizers import FusedAdam


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
