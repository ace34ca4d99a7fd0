"""sampler.py: greedy decoding equals an argmax loop over model.log_probs, for a batch of prompts of several
lengths and for a prompt longer than the memory; top-k = 1 is greedy; top-p keeps exactly the nucleus; draws
follow the filtered distribution at the temperature; a seed repeats the samples; a stop at the end of a line
cuts each sample before its first one."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import checkpoints
import sampler
from config import ModelConfig
from conftest import TINY_MODEL
from data_utils import EOL_ID

VOCAB_SIZE = 40


@pytest.fixture(scope="module")
def model():
    """A SuperNet of TINY_MODEL (mem_len 4) with an adaptive softmax, its candidates mixed by pi, of random
    weights 25x the initial ones': sharp enough for the context to decide the argmax."""
    keras.utils.set_random_seed(0)
    model = checkpoints.build_model(ModelConfig(vocab_size=VOCAB_SIZE, cutoffs=(10, 20), **TINY_MODEL))
    for variable in model.variables:
        variable.assign(tf.random.normal(variable.shape, stddev=0.5))
    return model


def argmax_loop(model, prompt, length):
    """The reference: the prompt read in one segment, then each argmax of model.log_probs fed back alone."""
    log_probs, memory = model.log_probs(tf.constant([prompt]), model.initial_memory(1))
    ids = []
    for _ in range(length):
        ids.append(int(np.argmax(log_probs[0, -1])))
        log_probs, memory = model.log_probs(tf.constant([[ids[-1]]]), memory)
    return prompt + ids


def test_greedy_sampling_equals_an_argmax_loop_over_log_probs(model):
    # Up to mem_len + 1 ids, a prompt read in one segment and one read id by id see the same context.
    prompts = [[5, 9, 2, 7, 3], [11], [4, 4, 30]]
    sampled = sampler.sample_ids(model, tf.ragged.constant(prompts), 12, temperature=0.0)
    assert sampled.to_list() == [argmax_loop(model, prompt, 12) for prompt in prompts]
    long_prompt = list(range(2, 14))  # 12 ids, longer than the memory: read in one segment by both.
    assert sampler.sample_ids(model, tf.ragged.constant([long_prompt] * 2), 6).to_list() == \
        [argmax_loop(model, long_prompt, 6)] * 2


def test_with_a_seed_top_k_1_is_greedy_and_the_same_seed_repeats_a_sample(model):
    prompts = tf.ragged.constant([[3, 8], [6]] * 2)
    greedy = sampler.sample_ids(model, prompts, 10, temperature=0.0)
    assert sampler.sample_ids(model, prompts, 10, temperature=1.5, top_k=1, seed=7).to_list() == greedy.to_list()
    first, again, other = (sampler.sample_ids(model, prompts, 10, temperature=1.0, seed=seed) for seed in (3, 3, 4))
    assert first.to_list() == again.to_list() != other.to_list()
    assert first[0].numpy().tolist() != first[2].numpy().tolist()  # Two samples of one prompt differ.


LOG_PROBS = np.log(np.array([[0.05, 0.5, 0.1, 0.3, 0.05]], np.float32))


@pytest.mark.parametrize("top_k, top_p, kept", [
    (0, 0.45, [1]),  # 0.5 alone reaches 0.45.
    (0, 0.75, [1, 3]),  # 0.5 + 0.3 crosses 0.75: both kept, and nothing else.
    (0, 0.85, [1, 2, 3]),
    (2, 1.0, [1, 3]),
    (2, 0.45, [1]),
    (4, 0.99, [0, 1, 2, 3, 4]),  # Id 4 ties with id 0, the 4th: both kept.
    (0, 1.0, [0, 1, 2, 3, 4]),
])
def test_filtering_keeps_exactly_the_top_k_and_the_nucleus_of_a_hand_made_distribution(top_k, top_p, kept):
    filtered = sampler.filter_logits(tf.constant(LOG_PROBS), top_k, top_p).numpy()[0]
    assert np.flatnonzero(np.isfinite(filtered)).tolist() == kept
    assert np.array_equal(filtered[kept], LOG_PROBS[0, kept])


@pytest.mark.parametrize("temperature, top_p", [(1.0, 0.75), (2.0, 1.0), (0.5, 0.85)])
def test_draws_follow_the_filtered_distribution_at_the_temperature(temperature, top_p):
    draws = 20_000
    ids = sampler.next_ids(tf.constant(np.repeat(LOG_PROBS, draws, axis=0)), tf.constant(temperature), 0,
                           tf.constant(top_p), [1, 2]).numpy()
    tempered = np.exp(LOG_PROBS[0] / temperature) / np.exp(LOG_PROBS[0] / temperature).sum()
    order = np.argsort(-tempered)
    nucleus = order[np.cumsum(tempered[order]) - tempered[order] < top_p]  # The nucleus of the tempered distribution.
    expected = np.zeros(5)
    expected[nucleus] = tempered[nucleus] / tempered[nucleus].sum()
    frequencies = np.bincount(ids, minlength=5) / draws
    assert np.all(np.abs(frequencies - expected) <= 4 * np.sqrt(expected * (1 - expected) / draws) + 1e-12)


def test_a_point_falls_in_the_segment_of_positive_mass_that_holds_it():
    mass = tf.constant([[0.0, 0.2, 0.0, 0.5, 0.3, 0.0]] * 6)  # Segments 1: [0, 0.2), 3: [0.2, 0.7), 4: [0.7, 1).
    points = tf.constant([[0.0], [0.1999], [0.2], [0.69], [0.7], [1.5]])  # The last is past the end.
    index, before = sampler.where_it_falls(mass, points)
    assert index.numpy().tolist() == [1, 1, 3, 3, 4, 4]
    np.testing.assert_allclose(before[0], [0.0, 0.0, 0.2, 0.2, 0.7, 1.0])


def test_draws_across_blocks_follow_the_distribution_and_never_take_an_id_of_probability_0():
    # 300 ids in blocks of 128: the last id of block 0, none of block 1, the first and the last of block 2
    # (padded to 384), and two inside block 0; every other id has probability 0.
    ids, probabilities = [3, 100, 127, 256, 299], np.array([0.1, 0.25, 0.05, 0.4, 0.2])
    logits = np.full((1, 300), -np.inf, np.float32)
    logits[0, ids] = np.log(probabilities)
    draws = 20_000
    drawn = sampler.draw(tf.constant(np.repeat(logits, draws, axis=0)), tf.constant([5, 6], tf.int64)).numpy()
    assert set(drawn.tolist()) == set(ids)
    frequencies = np.bincount(drawn, minlength=300)[ids] / draws
    assert np.all(np.abs(frequencies - probabilities) <= 4 * np.sqrt(probabilities * (1 - probabilities) / draws))


def test_a_stop_at_the_end_of_a_line_cuts_each_sample_before_its_first_one(model):
    prompts = tf.ragged.constant([[3, 8, 5]] * 8)
    free = sampler.sample_ids(model, prompts, 40, temperature=1.0, seed=11).to_list()
    stopped = sampler.sample_ids(model, prompts, 40, temperature=1.0, seed=11, stop_at_eol=True).to_list()
    cut = [row[:3 + row[3:].index(EOL_ID)] if EOL_ID in row[3:] else row for row in free]
    assert stopped == cut and sum(len(row) < 43 for row in stopped) >= 2


def test_a_bad_setting_is_refused_naming_it(model):
    prompts = tf.ragged.constant([[3]])
    for settings, message in [(dict(top_p=0.0), "top_p must be in"), (dict(max_new_tokens=-1), "max_new_tokens"),
                              (dict(temperature=-1.0), "temperature must be")]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            sampler.sample_ids(model, prompts, **{"max_new_tokens": 2, **settings})
