"""The weights' optimizer and learning-rate schedule; FusedAdam, and the schedule's shape, serve the search's logits too."""
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
