"""Gumbel-softmax: sample frequencies, the low-temperature limit, gradients and the tau schedule."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from gumbel import ExponentialTauSchedule, gumbel_softmax, sample_gumbel


def test_hard_sample_frequencies_match_softmax_of_logits():
    logits = np.array([1.0, -0.5, 0.3], np.float32)
    draws = 20_000
    samples = gumbel_softmax(tf.broadcast_to(logits, [draws, 3]), tau=1.0, hard=True, seed=0).numpy()
    frequencies = samples.mean(axis=0)
    expected = np.exp(logits) / np.exp(logits).sum()
    standard_error = np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(frequencies - expected) < 5 * standard_error), (frequencies, expected)
    assert np.all(samples.sum(axis=1) == 1.0)


def test_argmax_of_soft_samples_is_distributed_as_softmax_whatever_tau():
    logits = np.array([0.0, 1.0, 2.0, -1.0], np.float32)
    draws = 20_000
    samples = gumbel_softmax(tf.broadcast_to(logits, [draws, 4]), tau=5.0, seed=1).numpy()
    frequencies = np.bincount(samples.argmax(axis=1), minlength=4) / draws
    expected = np.exp(logits) / np.exp(logits).sum()
    assert np.all(np.abs(frequencies - expected) < 5 * np.sqrt(expected * (1 - expected) / draws))


def test_small_tau_gives_near_one_hot_samples():
    # Ties are the hardest case: a sample is one-hot only when its two largest noises differ by >> tau.
    largest = {tau: gumbel_softmax(tf.zeros([2000, 3]), tau=tau, seed=2).numpy().max(axis=1) for tau in (1.0, 0.01)}
    assert np.mean(largest[0.01] > 0.99) > 0.95
    assert np.mean(largest[1.0] > 0.99) < 0.2


@pytest.mark.parametrize("hard", [False, True])
def test_gradients_reach_the_logits(hard):
    logits = tf.Variable([0.2, -0.1, 0.4])
    weights = tf.constant([1.0, 2.0, 3.0])
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(gumbel_softmax(logits, tau=0.5, hard=hard, seed=3) * weights)
    gradient = tape.gradient(value, logits).numpy()
    assert np.all(np.isfinite(gradient)) and np.any(gradient != 0)


def test_noise_is_finite_at_the_edges_of_the_uniform_draw(monkeypatch):
    tiny = np.finfo(np.float32).tiny
    for edge in (tiny, np.nextafter(np.float32(1), np.float32(0))):
        monkeypatch.setattr(keras.random, "uniform", lambda shape, minval, maxval, dtype, seed, e=edge: tf.fill(shape, tf.constant(max(e, minval), dtype)))
        assert np.all(np.isfinite(sample_gumbel([4]).numpy()))


def test_seed_generator_noise_is_reproducible_and_advances():
    first, second = keras.random.SeedGenerator(7), keras.random.SeedGenerator(7)
    a, b = sample_gumbel([5], seed=first), sample_gumbel([5], seed=second)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(sample_gumbel([5], seed=first), a)


def test_low_precision_noise_is_finite_and_has_the_requested_dtype():
    noise = sample_gumbel([1000], seed=4, dtype="bfloat16")
    assert noise.dtype == tf.bfloat16 and np.all(np.isfinite(tf.cast(noise, tf.float32).numpy()))


def test_compiled_sampling_takes_tau_as_a_tensor_without_retracing():
    generator = keras.random.SeedGenerator(5)
    traces = []

    @tf.function(jit_compile=True)
    def sample(logits, tau):
        traces.append(tau)
        return gumbel_softmax(logits, tau, hard=True, seed=generator)

    logits = tf.constant([[0.5, -0.2, 0.1]] * 64)
    first, second = sample(logits, tf.constant(1.0)), sample(logits, tf.constant(0.3))
    assert len(traces) == 1
    for samples in (first.numpy(), second.numpy()):
        assert np.all(samples.sum(axis=1) == 1.0) and set(np.unique(samples)) <= {0.0, 1.0}
    assert not np.array_equal(first, second)  # The generator's state advanced between calls.


@pytest.mark.parametrize("tau_start, tau_end", [(1.0, 0.1), (2.7, 0.37), (4.564650330615831, 3.0371125210782273)])
def test_exponential_tau_schedule_hits_both_ends_exactly(tau_start, tau_end):
    schedule = ExponentialTauSchedule(tau_start=tau_start, tau_end=tau_end, total_steps=1000)
    assert float(schedule(0)) == float(np.float32(tau_start))  # Exact in float32, not approximately.
    assert float(schedule(1000)) == float(np.float32(tau_end))
    assert float(schedule(tf.constant(5000, tf.int64))) == float(np.float32(tau_end))
    assert float(schedule(500)) == pytest.approx(np.sqrt(tau_start * tau_end), rel=1e-6)  # Geometric mean.
    assert float(schedule(250)) == pytest.approx(tau_start * (tau_end / tau_start) ** 0.25, rel=1e-6)


def test_exponential_tau_schedule_config_and_errors():
    schedule = ExponentialTauSchedule(tau_start=1.0, tau_end=0.1, total_steps=1000)
    rebuilt = ExponentialTauSchedule.from_config(schedule.get_config())
    assert float(rebuilt(0)) == 1.0 and float(rebuilt(500)) == pytest.approx(0.1**0.5, rel=1e-6)
    with pytest.raises(ValueError, match="tau_end=0"):
        ExponentialTauSchedule(1.0, 0.0, 10)
    with pytest.raises(ValueError, match="total_steps=0"):
        ExponentialTauSchedule(1.0, 0.1, 0)
