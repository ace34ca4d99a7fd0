"""Gumbel-softmax sampling (Jang et al. 2016; Maddison et al. 2016) and its temperature schedule.

A stochastic block mixes its candidates with y = softmax((logits + g) / tau), g ~ Gumbel(0, 1):
a differentiable relaxation of a one-hot sample from softmax(logits). As tau falls toward 0 the
samples approach one-hot, so the SuperNet approaches a discrete architecture.
"""
import keras
import numpy as np
import tensorflow as tf


def sample_gumbel(shape, seed=None, dtype="float32"):
    """Standard Gumbel noise -log(-log(U)) of `shape`, cast to `dtype`.

    U is drawn in float32 from [tiny, 1), so neither log sees 0 (the largest float32 below 1 gives
    -log(-log(U)) = 16.6, the smallest normal one -4.5), then cast, so that a low-precision
    `dtype` (bfloat16 has no numpy finfo) gets the same safe noise.
    seed: an int, None, or a keras.random.SeedGenerator (whose state makes the noise checkpointable).
    """
    tiny = float(np.finfo(np.float32).tiny)
    uniform = keras.random.uniform(shape, minval=tiny, maxval=1.0, dtype="float32", seed=seed)
    return tf.cast(-tf.math.log(-tf.math.log(uniform)), dtype)


def gumbel_softmax(logits, tau, hard=False, seed=None):
    """A relaxed one-hot sample over the last axis of `logits`, in float32.

    tau: float or scalar tensor (a tensor keeps a compiled step from retracing as it anneals).
    hard: straight-through; the forward value is the one-hot argmax, the gradient the soft sample's.
    seed: an int, None, or a keras.random.SeedGenerator (whose state makes the noise checkpointable).
    """
    logits = tf.cast(logits, tf.float32)
    noise = sample_gumbel(tf.shape(logits), seed=seed)
    soft = tf.nn.softmax((logits + noise) / tf.cast(tau, tf.float32), axis=-1)
    if not hard:
        return soft
    one_hot = tf.one_hot(tf.argmax(soft, axis=-1), tf.shape(soft)[-1], dtype=soft.dtype)
    return one_hot - tf.stop_gradient(soft) + soft


class ExponentialTauSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """tau(step) = tau_start * (tau_end / tau_start) ** min(step / total_steps, 1), in float32.

    Starts exactly at tau_start, ends exactly at tau_end at total_steps and stays there (the
    reference implementation ended at tau_start * tau_end). Computed as
    tau_start ** (1 - p) * tau_end ** p, so both ends are exact in float32 too: the ratio form
    misses tau_end by one ulp for about a third of (tau_start, tau_end) pairs. A Keras schedule,
    so it takes the step as a tensor inside a compiled step and serialises with get_config.
    """

    def __init__(self, tau_start, tau_end, total_steps):
        if tau_start <= 0 or tau_end <= 0:
            raise ValueError(f"tau_start={tau_start} and tau_end={tau_end} must both be positive.")
        if total_steps < 1:
            raise ValueError(f"total_steps={total_steps} must be at least 1.")
        self.tau_start = tau_start
        self.tau_end = tau_end
        self.total_steps = total_steps

    def __call__(self, step):
        """step: int or scalar tensor -> tau, a float32 scalar tensor."""
        progress = tf.minimum(tf.cast(step, tf.float32) / float(self.total_steps), 1.0)
        tau_start = tf.constant(self.tau_start, tf.float32)
        tau_end = tf.constant(self.tau_end, tf.float32)
        return tf.pow(tau_start, 1.0 - progress) * tf.pow(tau_end, progress)

    def get_config(self):
        return {"tau_start": self.tau_start, "tau_end": self.tau_end, "total_steps": self.total_steps}
