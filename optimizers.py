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
    chunk_step(inputs, targets, memory) -> (a scalar, the new Memory, gradients). The first chunk runs,
    then the others in a while loop of one iteration at a time, each waiting for the previous one's
    gradients, so that one chunk's activations are alive at a time. The `replayed` variables are set back
    before each chunk to their values before the first: the seed states of a sample drawn once a step,
    which every chunk then draws alike.
    """
    if chunks == 1:
        return chunk_step(inputs, targets, memory)
    inputs, targets, states = (tf.stack(tf.split(rows, chunks, axis)) for rows, axis in
                               ((inputs, 0), (targets, 0), (memory.states, 1)))  # [chunks, ...] each
    starts = [tf.identity(variable) for variable in replayed]

    def run(chunk):
        for variable, start in zip(replayed, starts):
            variable.assign(start)
        return chunk_step(inputs[chunk], targets[chunk], memory._replace(states=states[chunk]))

    def add_chunk(chunk, total, new_states, sums):
        value, new_memory, gradients = run(chunk)
        return (chunk + 1, total + value, new_states.write(chunk, new_memory.states),
                [add_gradient(summed, gradient, chunk) for summed, gradient in zip(sums, gradients)])

    total, first, gradients = run(0)
    _, total, new_states, sums = tf.while_loop(
        lambda chunk, *_: chunk < chunks, add_chunk,
        (1, total, chunk_array(first.states, chunks), [gradient_sum(gradient, chunks) for gradient in gradients]),
        parallel_iterations=1)
    return (total, first._replace(states=tf.concat(tf.unstack(new_states.stack(), chunks), axis=1)),
            [summed_gradient(summed, gradient) for summed, gradient in zip(sums, gradients)])


# A gradient's sum over chunks. An embedding's gradient, tf.IndexedSlices (a row per token), gathers every
# chunk's rows, as one batch's gradient would hold them: summed into a dense tensor instead, its norm would
# differ, and with it --clip_norm's clipping, which Keras takes over the rows.

def chunk_array(first, chunks):
    """A TensorArray of an entry a chunk, the first chunk's `first` written."""
    return tf.TensorArray(first.dtype, size=chunks, element_shape=first.shape).write(0, first)


def gradient_sum(first, chunks):
    """The sum of the first chunk's gradient: itself, or an IndexedSlices' (values, indices) arrays."""
    if isinstance(first, tf.IndexedSlices):
        return chunk_array(first.values, chunks), chunk_array(first.indices, chunks)
    return first


def add_gradient(summed, gradient, chunk):
    if isinstance(gradient, tf.IndexedSlices):
        return summed[0].write(chunk, gradient.values), summed[1].write(chunk, gradient.indices)
    return summed + gradient


def summed_gradient(summed, first):
    """The gradient of every chunk, in the first chunk's type."""
    if isinstance(first, tf.IndexedSlices):
        return tf.IndexedSlices(summed[0].concat(), summed[1].concat(), first.dense_shape)
    return summed
