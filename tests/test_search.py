"""search.py: the logits' schedules and freeze, the held-out stream, and the cost term's gradient."""
import math

import numpy as np
import pytest
import tensorflow as tf

import data_utils
import search
import train
from conftest import TINY_MODEL
from config import ModelConfig, TrainConfig


@pytest.mark.parametrize("arch_schedule, expected", [
    ("constant", [1e-3, 1e-3, 1e-3, 1e-3, 1e-3]),
    ("after_warmup", [0.0, 0.0, 0.0, 1e-3, 1e-3]),
    ("weights", [0.0, 5e-4, 9e-4, 1e-3, 1e-3 * 0.5 * (1 + math.cos(math.pi * 40 / 90))]),  # Cosine over steps 10..100.
])
def test_arch_schedules_set_the_logits_learning_rate_at_steps_0_5_9_10_50(arch_schedule, expected):
    config = TrainConfig(arch_lr=1e-3, warmup_steps=10, arch_schedule=arch_schedule)
    schedule = search.arch_learning_rate_schedule(config, total_steps=100)
    rates = [float(schedule(step)) if callable(schedule) else schedule for step in (0, 5, 9, 10, 50)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6, atol=1e-12)


def test_after_warmup_the_logits_stay_put_during_warmup_while_the_weights_learn(tmp_path):
    data_dir = data_utils.write_stream_dataset(tmp_path / "data", np.arange(1, 30).repeat(4), vocab_size=30,
                                               batch_size=2, seq_len=8)
    config = TrainConfig(warmup_steps=5, arch_schedule="after_warmup")
    trainer = train.Trainer(ModelConfig(vocab_size=30, cutoffs=(), **TINY_MODEL), config, 10, 2, 8)
    logits, embedding = [v.numpy() for v in trainer.model.arch_variables], trainer.model.embedding.embeddings.numpy()
    batches = list(data_utils.make_dataset(data_dir, "train").take(6))
    for inputs, targets in batches[:5]:
        trainer.train_step(inputs, targets)
    assert all(np.array_equal(before, v.numpy()) for before, v in zip(logits, trainer.model.arch_variables))
    assert not np.array_equal(embedding, trainer.model.embedding.embeddings.numpy())
    trainer.train_step(*batches[5])  # Step 6, the first after the warmup.
    assert not any(np.array_equal(before, v.numpy()) for before, v in zip(logits, trainer.model.arch_variables))


def search_trainer(**train_options):
    """A SuperNet's Trainer whose search charges attention 4, dense 2 and identity 0 (--cost_table) when asked."""
    model_config = ModelConfig(vocab_size=20, cutoffs=(), **TINY_MODEL)
    config = TrainConfig(epochs=1, warmup_steps=0, cost_source="table", cost_table=(4.0, 2.0, 0.0), **train_options)
    return train.Trainer(model_config, config, 10, batch_size=2, seq_len=8)


def values(variables):
    return [np.array(variable.numpy()) for variable in variables]


def test_the_heldout_stream_moves_only_the_logits_and_the_training_stream_only_the_weights():
    trainer = search_trainer(arch_holdout=0.2, arch_lr=0.05)
    tokens = tf.constant(np.arange(16).reshape(2, 8) % 19 + 1, tf.int32)
    model, heldout_states = trainer.model, trainer.search.streams["heldout"][0]
    weights, logits, heldout_memory = values(model.weight_variables), values(model.arch_variables), heldout_states.numpy()
    trainer.train_step(tokens, tokens)
    assert all(np.array_equal(a, b) for a, b in zip(values(model.arch_variables), logits))
    assert not any(np.array_equal(a, b) for a, b in zip(values(model.weight_variables)[:1], weights[:1]))
    assert np.array_equal(heldout_states.numpy(), heldout_memory)  # The held-out stream's memory is its own.
    weights, train_memory = values(model.weight_variables), trainer.memory_states.numpy()
    trainer.heldout_step(tokens, tokens)
    assert all(np.array_equal(a, b) for a, b in zip(values(model.weight_variables), weights))
    assert all(not np.array_equal(a, b) for a, b in zip(values(model.arch_variables), logits))
    assert np.array_equal(trainer.memory_states.numpy(), train_memory)
    assert not np.array_equal(heldout_states.numpy(), heldout_memory)


def test_the_cost_terms_gradient_on_the_logits_is_the_analytic_one():
    trainer = search_trainer(cost_weight=0.7)
    rng = np.random.default_rng(0)
    for logits in trainer.model.arch_variables:
        logits.assign(rng.normal(size=3).astype(np.float32))
    shares = np.array([4.0, 2.0, 0.0]) / (3 * 4.0)  # Three blocks, attention the costliest.
    np.testing.assert_allclose(trainer.search.cost_shares, shares, rtol=1e-6)
    with tf.GradientTape() as tape:
        term = trainer.search.loss(tf.constant(0.0))
    gradients = tape.gradient(term, trainer.model.arch_variables)
    pi = trainer.model.arch_probabilities()
    np.testing.assert_allclose(term, 0.7 * np.sum(pi * shares), rtol=1e-6)
    np.testing.assert_allclose(trainer.search.loss(tf.constant(1.0), share=0.25), 1 + term / 4, rtol=1e-6)  # A chunk's.
    for block_pi, gradient in zip(pi, gradients):  # d/dz_j sum_k pi_k c_k = pi_j (c_j - sum_k pi_k c_k).
        np.testing.assert_allclose(gradient, 0.7 * block_pi * (shares - block_pi @ shares), rtol=1e-5, atol=1e-8)


def test_a_freeze_holds_the_logits_learning_rate_at_zero_for_its_steps():
    schedule = search.arch_learning_rate_schedule(TrainConfig(arch_freeze_steps=3, arch_lr=0.01), total_steps=10)
    rates = [float(schedule(tf.constant(step, tf.int64))) for step in (0, 2, 3, 9)]
    assert rates[:2] == [0.0, 0.0] and rates[2:] == pytest.approx([0.01, 0.01], rel=1e-6)
    assert search.steps_frozen(TrainConfig(arch_schedule="after_warmup", warmup_steps=50, arch_freeze_steps=7)) == 50


def test_the_heldout_batches_are_a_minority_of_an_epoch():
    assert search.heldout_batches(100, 0.0) == 0 and search.heldout_batches(100, 0.2) == 20
    assert search.heldout_batches(3, 0.01) == 1
    with pytest.raises(ValueError, match="--arch_holdout=0.4: 1 of the 2 training batches"):
        search.heldout_batches(2, 0.4)
