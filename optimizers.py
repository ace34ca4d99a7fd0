"""The weights' optimizer and learning-rate schedule (FusedAdam, and the schedule's shape, serve the search's logits
too), and gradient accumulation over a batch's chunks."""
import keras
import tensorflow as tf


class FusedAdam(keras.optimizers.Adam):
    """Keras' Adam, each variable's update done by TensorFlow's fused ResourceApplyAdam kernel.

    Keras 3 writes the update as about 15 element-wise ops per variable, each a kernel launch and
    a pass over memory on a CPU: about 12 ms of a 120 ms bfloat16 SuperNet step (bench.py, 2 cores).
    The kernel, the one tf.keras 2 used, computes the same update in one pass; the moments, the
    step count and the schedule stay Keras' own, so checkpoints do not change. Under a distribution
    strategy, or with amsgrad, Keras' own update runs.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or tf.distribute.has_strategy():
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
            beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step), beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
            lr=tf.cast(learning_rate, dtype), beta1=tf.cast(self.beta_1, dtype), beta2=tf.cast(self.beta_2, dtype),
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(tf.convert_to_tensor(gradient), dtype))


def learning_rate_schedule(config, total_steps):
    """The weights' learning rate by steps taken: Keras' linear warmup to max_lr, then cosine decay to 0."""
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(total_steps - config.warmup_steps, 1),
        warmup_target=config.max_lr,
        warmup_steps=config.warmup_steps,
    )


def make_weight_optimizer(config, schedule):
    """The weights' Adam, following the learning rate `schedule`, with global-norm clipping."""
    optimizer = FusedAdam(schedule, **({"global_clipnorm": config.clip_norm} if config.clip_norm > 0 else {}))
    # float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none.
    return keras.optimizers.LossScaleOptimizer(optimizer) if config.precision == "float16" else optimizer


def summed_over_chunks(chunk_step, chunks, inputs, targets, memory, replayed=()):
    """Gradient accumulation (Transformer-XL's --batch_chunk): chunk_step on each of `chunks` equal slices of a
    batch's rows in turn -> (the sum of its values, every row's new memory, the sum of its gradients).

    inputs, targets [B, T]; memory: a model.Memory, whose states [L, B, M, D] hold the rows on axis 1.
    chunk_step(inputs, targets, memory) -> (a float32 scalar, the new Memory, gradients). The chunks run in a
    while loop of one iteration at a time, so that one chunk's activations are alive at a time. Its sums
    start empty, shaped by a trace of chunk_step that never runs: with the first chunk run before the loop
    instead, TensorFlow held more memory (a CPU step of 32 rows in 2 chunks: 290 MiB, against 230). The
    `replayed` variables are set back before each chunk to their values before the first: the seed states
    of a sample drawn once a step, which every chunk then draws alike.
    """
    if chunks == 1:
        return chunk_step(inputs, targets, memory)
    inputs, targets, states = (tf.stack(tf.split(rows, chunks, axis)) for rows, axis in
                               ((inputs, 0), (targets, 0), (memory.states, 1)))  # [chunks, ...] each
    starts = [tf.identity(variable) for variable in replayed]

    def rows_of(chunk):
        return inputs[chunk], targets[chunk], memory._replace(states=states[chunk])

    def add_chunk(chunk, total, new_memory, sums):
        for variable, start in zip(replayed, starts):
            variable.assign(start)
        value, chunk_memory, gradients = chunk_step(*rows_of(chunk))
        new_memory = chunk_memory._replace(states=new_memory.states.write(chunk, chunk_memory.states))
        return chunk + 1, total + value, new_memory, [add_gradient(*pair, chunk) for pair in zip(sums, gradients)]

    _, like_memory, like_gradients = tf.function(chunk_step).get_concrete_function(*rows_of(0)).structured_outputs
    empty = (0, 0.0, memory._replace(states=chunk_array(like_memory.states, chunks)),
             [empty_sum(gradient, chunks) for gradient in like_gradients])
    _, total, new_memory, sums = tf.while_loop(lambda chunk, *_: chunk < chunks, add_chunk, empty,
                                               parallel_iterations=1)
    states = tf.concat(tf.unstack(new_memory.states.stack(), chunks), axis=1)  # [L, B, M, D]
    return total, new_memory._replace(states=states), [summed_gradient(*pair) for pair in zip(sums, like_gradients)]


# A gradient's sum over chunks. An embedding's gradient, tf.IndexedSlices (a row per token), gathers every
# chunk's rows, as the whole batch's gradient holds them: summed into a dense tensor instead, its norm would
# differ, and with it --clip_norm's clipping, which Keras takes over the rows.

def chunk_array(like, chunks):
    """A TensorArray of an entry a chunk, each like `like`."""
    return tf.TensorArray(like.dtype, size=chunks, element_shape=like.shape)


def empty_sum(like, chunks):
    """No gradient yet: zeros like `like`, or for an IndexedSlices its values' and indices' TensorArrays."""
    if isinstance(like, tf.IndexedSlices):
        return chunk_array(like.values, chunks), chunk_array(like.indices, chunks)
    return tf.zeros(like.shape, like.dtype)


def add_gradient(summed, gradient, chunk):
    if isinstance(gradient, tf.IndexedSlices):
        return summed[0].write(chunk, gradient.values), summed[1].write(chunk, gradient.indices)
    return summed + gradient


def summed_gradient(summed, like):
    """The sum as a gradient of the type of `like`."""
    if isinstance(like, tf.IndexedSlices):
        dense_shape = tf.constant(tf.get_static_value(like.dense_shape))  # The variable's; the trace's stays there.
        return tf.IndexedSlices(summed[0].concat(), summed[1].concat(), dense_shape)
    return summed
