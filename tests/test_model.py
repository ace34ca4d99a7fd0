"""model.py: relative attention against a naive loop, causality, memory, the stochastic blocks, XLA, dtypes."""
import dataclasses
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_MODEL
from config import ModelConfig
from model import (AttentionBlock, DenseBlock, Dropout, IdentityBlock, LayerNorm, RelativeMultiHeadAttention,
                   StochasticBlock, TransformerXL, UnscaledReLUDropout, count_parameters)

TINY = dict(vocab_size=50, cutoffs=(20, 35), **TINY_MODEL)


def tiny_model(dtype=None, **overrides):
    model = TransformerXL(ModelConfig(**{**TINY, **overrides}), dtype=dtype)
    model.build((1, 1))
    return model


def random_tokens(shape, seed=0, vocab_size=TINY["vocab_size"]):
    return tf.constant(np.random.default_rng(seed).integers(1, vocab_size, shape), tf.int32)


# Relative attention.


def encoding(distance, d_model):
    """The sinusoidal encoding of one distance, written out: [sin | cos] halves, as Transformer-XL."""
    inv_freq = 1.0 / 10000 ** (np.arange(0, d_model, 2) / d_model)
    return np.concatenate([np.sin(distance * inv_freq), np.cos(distance * inv_freq)])


def naive_attention(layer, x, memory, valid_length, clamp_len=-1):
    """Loops over batch, head, query and key: the score of query t for key j uses R(M + t - j)."""
    wq, wk, wv, wr, wo, u, v = (np.asarray(w, np.float64) for w in (
        layer.query_kernel, layer.key_kernel, layer.value_kernel, layer.position_kernel, layer.output_kernel,
        layer.content_bias, layer.position_bias))
    batch, num_queries, d_model = x.shape
    num_memory = memory.shape[1]
    context = np.concatenate([memory, x], axis=1)
    output = np.zeros(x.shape)
    for b in range(batch):
        for h in range(layer.num_heads):
            for t in range(num_queries):
                query = x[b, t] @ wq[:, h]
                keys = [j for j in range(num_memory + num_queries)
                        if num_memory - valid_length <= j <= num_memory + t]
                scores = []
                for j in keys:
                    distance = num_memory + t - j
                    if clamp_len > 0:
                        distance = min(distance, clamp_len)
                    position_key = encoding(distance, d_model) @ wr[:, h]
                    scores.append(((query + u[h]) @ (context[b, j] @ wk[:, h])
                                   + (query + v[h]) @ position_key) / math.sqrt(layer.d_head))
                weights = np.exp(np.array(scores) - max(scores))
                weights /= weights.sum()
                attended = sum(w * (context[b, j] @ wv[:, h]) for w, j in zip(weights, keys))
                output[b, t] += attended @ wo[h]
    return output


@pytest.mark.parametrize("num_memory, num_queries, valid_length, clamp_len", [
    (0, 5, 0, -1),  # No memory: K == T.
    (3, 5, 3, -1),  # Full memory, T != K.
    (6, 4, 2, -1),  # Partly filled memory.
    (6, 4, 0, -1),  # Empty memory slots only.
    (6, 4, 6, 3),  # Clamped distances.
])
def test_relative_attention_matches_naive_loop(num_memory, num_queries, valid_length, clamp_len):
    rng = np.random.default_rng(num_memory + 10 * num_queries)
    layer = RelativeMultiHeadAttention(num_heads=2, d_head=5, clamp_len=clamp_len)  # d_head != d_model / heads.
    x = rng.normal(size=(2, num_queries, 16)).astype(np.float32)
    memory = rng.normal(size=(2, num_memory, 16)).astype(np.float32)
    output = layer(x, memory, tf.constant(valid_length, tf.int32))
    np.testing.assert_allclose(output, naive_attention(layer, x, memory, valid_length, clamp_len), atol=1e-5)


# The whole model.


def test_changing_a_token_changes_no_earlier_output():
    model = tiny_model()
    memory = model(random_tokens((2, 6), seed=1), model.initial_memory(2))[1]  # A partly filled memory.
    tokens = random_tokens((2, 8)).numpy()
    changed = tokens.copy()
    changed[:, 5] = changed[:, 5] % 49 + 1  # Another token id in 1..49.
    before, _ = model(tf.constant(tokens), memory)
    after, _ = model(tf.constant(changed), memory)
    np.testing.assert_allclose(before[:, :5], after[:, :5], atol=1e-6)
    assert np.abs(before[:, 5:] - after[:, 5:]).max() > 1e-3


@pytest.mark.parametrize("architecture, pre_norm", [("A", False), ("ADA", True), (None, False)])
def test_segments_with_memory_match_the_whole_sequence(architecture, pre_norm):
    model = tiny_model(architecture=architecture, pre_norm=pre_norm, mem_len=6, dropout_rate=0.0)
    tokens = random_tokens((2, 9))
    whole, _ = model(tokens, model.initial_memory(2))
    first, memory = model(tokens[:, :4], model.initial_memory(2))  # 4 < mem_len: memory partly valid.
    second, memory = model(tokens[:, 4:], memory)
    np.testing.assert_allclose(tf.concat([first, second], axis=1), whole, atol=1e-5)
    assert int(memory.valid_length) == 6


@pytest.mark.parametrize("architecture, pre_norm, eval_mode, dtype", [
    (None, False, "mix", "float32"), (None, True, "argmax", "float32"), ("ADA", True, "mix", "float32"),
    ("DAD", False, "mix", "float32"), ("DD", False, "mix", "float32"), (None, False, "mix", "mixed_bfloat16")])
def test_projected_memory_gives_the_outputs_of_the_states_memory(architecture, pre_norm, eval_mode, dtype):
    # Generation's path: a segment read with states, then one token at a time past mem_len (4), so that the
    # keys and values slide as the states do.
    model = tiny_model(dtype, architecture=architecture, pre_norm=pre_norm, dropout_rate=0.0)
    tolerance = 1e-5 if dtype == "float32" else 2e-2
    tokens = random_tokens((2, 10))
    _, states = model(tokens[:, :3], model.initial_memory(2), eval_mode=eval_mode)
    projected = model.key_value_memory(states)
    for t in range(3, 10):
        expected, states = model(tokens[:, t:t + 1], states, eval_mode=eval_mode)
        hidden, projected = model(tokens[:, t:t + 1], projected, eval_mode=eval_mode)
        np.testing.assert_allclose(tf.cast(hidden, tf.float32), tf.cast(expected, tf.float32), atol=tolerance)
        assert int(projected.valid_length) == int(states.valid_length) == min(t + 1, 4)
    np.testing.assert_allclose(tf.cast(projected.keys, tf.float32),
                               tf.cast(model.key_value_memory(states).keys, tf.float32), atol=tolerance)


def test_no_gradient_flows_into_or_out_of_the_memory():
    model = tiny_model(architecture="A", dropout_rate=0.0)
    _, memory = model(random_tokens((2, 4), seed=1), model.initial_memory(2))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(memory.states)
        hidden, new_memory = model(random_tokens((2, 4)), memory)
        loss = tf.reduce_sum(hidden)
    assert tape.gradient(loss, memory.states) is None
    assert all(g is None for g in tape.gradient(new_memory.states, model.trainable_variables))


def test_evaluation_is_deterministic_and_training_is_not():
    model = tiny_model(dropout_rate=0.0)  # Only the Gumbel noise differs between training calls.
    tokens, memory = random_tokens((2, 5)), model.initial_memory(2)
    np.testing.assert_array_equal(model(tokens, memory)[0], model(tokens, memory)[0])
    assert not np.allclose(model(tokens, memory, training=True)[0], model(tokens, memory, training=True)[0])


def test_fixed_architectures_build_only_the_named_blocks():
    dense_only = tiny_model(architecture="DDDDDD")
    assert not any("relative_multi_head_attention" in v.path for v in dense_only.variables)
    assert count_parameters(dense_only)["attention"] == 0
    assert dense_only.initial_memory(2).states.shape == (0, 2, 4, 16)
    assert dense_only.arch_variables == [] and dense_only.derived_architecture() == "DDDDDD"
    mixed = tiny_model(architecture="AADDDI")
    assert [type(b) for b in mixed.blocks] == [AttentionBlock] * 2 + [DenseBlock] * 3 + [IdentityBlock]
    assert mixed.num_memory_layers == 2 and mixed.config.num_layers == 6
    supernet = tiny_model(num_layers=6)
    assert count_parameters(mixed)["attention"] * 3 == count_parameters(supernet)["attention"]


def training_loss_and_gradients(architecture):
    keras.utils.set_random_seed(3)
    model = tiny_model(architecture=architecture, dropout_rate=0.2)
    segment = random_tokens((2, 5))
    with tf.GradientTape() as tape:
        nll, _ = model.token_nll(segment, segment, model.initial_memory(2), training=True)
        loss = tf.reduce_mean(nll)
    return loss, [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]  # Embedding's: sparse.


def test_an_identity_block_is_skipped_so_only_the_order_of_computing_blocks_defines_a_network():
    """ADIDDD and AIDDDD are one network: the same weights, dropout masks, loss and gradients from one seed."""
    loss, gradients = training_loss_and_gradients("ADIDDD")
    moved_loss, moved_gradients = training_loss_and_gradients("AIDDDD")
    assert float(loss) == float(moved_loss)
    for gradient, moved in zip(gradients, moved_gradients, strict=True):
        np.testing.assert_array_equal(gradient, moved)
    other_loss, _ = training_loss_and_gradients("DADDDD")  # Computing blocks reordered: another network.
    assert float(other_loss) != float(loss)


def copy_choices_into_fixed_model(supernet, choices):
    """A fixed model whose blocks are the supernet's chosen candidates, with the same weights."""
    fixed = tiny_model(architecture=choices, dropout_rate=0.0)
    fixed.embedding.set_weights(supernet.embedding.get_weights())
    fixed.output_layer.set_weights(supernet.output_layer.get_weights())
    for fixed_block, block, choice in zip(fixed.blocks, supernet.blocks, choices):
        fixed_block.set_weights(block.candidates["ADI".index(choice)].get_weights())
    return fixed


def poison_the_unchosen(supernet, choices):
    """Sets every weight of each block's candidates but the chosen one to NaN: a candidate that ran would spread them."""
    for block, choice in zip(supernet.blocks, choices):
        for candidate, kind in zip(block.candidates, "ADI"):
            for weight in candidate.weights if kind != choice else []:
                weight.assign(tf.fill(weight.shape, float("nan")))


def test_argmax_evaluation_equals_the_chosen_fixed_architecture():
    supernet = tiny_model(dropout_rate=0.0)
    for block, logits in zip(supernet.blocks, ([0.1, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 0.3])):
        block.arch_logits.assign(logits)
    assert supernet.derived_architecture() == "ADI"
    fixed = copy_choices_into_fixed_model(supernet, "ADI")
    supernet_memory, fixed_memory = supernet.initial_memory(2), fixed.initial_memory(2)
    for segment in (random_tokens((2, 5), seed=1), random_tokens((2, 5), seed=2)):
        supernet_nll, supernet_memory = supernet.token_nll(segment, segment, supernet_memory, eval_mode="argmax")
        fixed_nll, fixed_memory = fixed.token_nll(segment, segment, fixed_memory)
        np.testing.assert_allclose(supernet_nll, fixed_nll, atol=1e-5)
    np.testing.assert_array_equal(supernet_memory.states[0], fixed_memory.states[0])
    mixed_nll = supernet.token_nll(segment, segment, supernet_memory)[0]  # eval_mode="mix" by default.
    assert not np.allclose(mixed_nll, fixed_nll, atol=1e-3)  # Mixing with pi is not the argmax architecture.


def test_an_unknown_eval_mode_is_refused_by_name():
    supernet, segment = tiny_model(), random_tokens((2, 5), seed=1)
    with pytest.raises(ValueError, match="eval_mode='best'"):
        supernet.token_nll(segment, segment, supernet.initial_memory(2), eval_mode="best")


def block_inputs(batch=2, length=4, mem_len=3):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, length, 16)), tf.float32)
    memory = tf.constant(rng.normal(size=(batch, mem_len, 16)), tf.float32)
    return x, memory, tf.constant(mem_len, tf.int32)


def candidates():
    return [AttentionBlock(2, 8), DenseBlock(16, 32), IdentityBlock()]


@pytest.mark.parametrize("per_example", [False, True])
def test_stochastic_block_mixes_its_candidates_with_pi(per_example):
    block = StochasticBlock(candidates(), gumbel_per_example=per_example)  # Per-example sampling is for training only.
    x, memory, valid_length = block_inputs()
    block.build(x.shape)
    block.arch_logits.assign([1.0, -0.5, 0.2])
    pi = tf.nn.softmax(block.arch_logits)
    expected = sum(pi[i] * candidate(x, memory, valid_length) for i, candidate in enumerate(block.candidates))
    np.testing.assert_allclose(block(x, memory, valid_length), expected, atol=1e-6)


@pytest.mark.parametrize("per_example", [False, True])
def test_straight_through_samples_pick_one_candidate_and_keep_soft_gradients(per_example):
    block = StochasticBlock(candidates(), gumbel_per_example=per_example, straight_through=True)
    x, memory, valid_length = block_inputs(batch=16)
    block.build(x.shape)
    weights = block.choice_weights(16, tau=tf.constant(0.5), training=True)
    assert weights.shape == ((16, 3) if per_example else (3,))
    np.testing.assert_allclose(tf.reduce_max(weights, axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(tf.reduce_sum(weights, axis=-1), 1.0, atol=1e-6)
    if per_example:  # Sixteen rows of uniform pi: more than one choice among them.
        assert len(set(np.argmax(weights, axis=-1))) > 1
    outputs = [candidate(x, memory, valid_length) for candidate in block.candidates]
    with tf.GradientTape() as tape:
        mixed = block(x, memory, valid_length, tau=tf.constant(0.5), training=True)
        loss = tf.reduce_sum(mixed)
    per_row = [min(np.abs(mixed[b] - output[b]).max() for output in outputs) for b in range(16)]
    assert max(per_row) < 1e-5
    assert np.abs(tape.gradient(loss, block.arch_logits)).max() > 0


@pytest.mark.parametrize("architecture, training", [("ADA", True), (None, False)])
def test_compiled_training_step_matches_eager(architecture, training):
    """Loss, gradients and memory of one step, eager and under XLA, in float32.

    Random draws cannot be compared: for the same seed state XLA's stateless RNG picks another
    algorithm than eager TensorFlow's. So dropout is 0, and the SuperNet runs without Gumbel noise
    (training=False mixes with pi), which still sends gradients to the arch logits.
    """
    model = tiny_model(architecture=architecture, dropout_rate=0.0)
    tokens, labels = random_tokens((2, 6), seed=1), random_tokens((2, 6), seed=2)
    _, memory = model(random_tokens((2, 3), seed=3), model.initial_memory(2))

    def step(tokens, labels, memory, tau):
        with tf.GradientTape() as tape:
            nll, new_memory = model.token_nll(tokens, labels, memory, tau=tau, training=training)
            loss = tf.reduce_mean(nll)
        gradients = tape.gradient(loss, model.trainable_variables)
        return loss, [tf.convert_to_tensor(g) for g in gradients], new_memory.states  # Embedding: dense, not sliced.

    eager = step(tokens, labels, memory, tf.constant(0.7))
    compiled = tf.function(step, jit_compile=True)(tokens, labels, memory, tf.constant(0.7))
    np.testing.assert_allclose(compiled[0], eager[0], atol=1e-5)
    for variable, eager_gradient, compiled_gradient in zip(model.trainable_variables, eager[1], compiled[1]):
        assert np.abs(eager_gradient).max() > 0, variable.path
        np.testing.assert_allclose(compiled_gradient, eager_gradient, atol=1e-5, err_msg=variable.path)
    np.testing.assert_allclose(compiled[2], eager[2], atol=1e-5)


def test_no_memory():
    model = tiny_model(mem_len=0)
    memory = model.initial_memory(2)
    assert memory.states.shape == (3, 2, 0, 16)
    for seed in (1, 2):
        nll, memory = model.token_nll(random_tokens((2, 5), seed), random_tokens((2, 5), seed + 1), memory)
        assert np.isfinite(nll).all() and memory.states.shape == (3, 2, 0, 16) and int(memory.valid_length) == 0


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_half_precision_is_finite_with_empty_memory(policy):
    model = TransformerXL(ModelConfig(**{**TINY, "mem_len": 8}), dtype=policy)
    memory = model.initial_memory(2)
    assert memory.states.dtype == model.compute_dtype == policy.split("_")[1]
    for seed, training in ((1, False), (2, True)):
        nll, memory = model.token_nll(random_tokens((2, 5), seed), random_tokens((2, 5), seed + 1), memory,
                                      tau=tf.constant(0.5), training=training)
        assert nll.dtype == tf.float32 and np.isfinite(nll).all()
    log_probs, _ = model.log_probs(random_tokens((2, 5), 3), memory)
    assert log_probs.dtype == tf.float32 and np.isfinite(log_probs).all()
    assert all(v.dtype == "float32" for v in model.trainable_variables)


# Config, serialisation and accounting.


def test_config_round_trips_through_json_and_keras():
    config = ModelConfig(**{**TINY, "architecture": "ADI", "proj_dims": (8, 4)})
    assert config.num_layers == 3 and config.head_dim == 8
    assert ModelConfig(**json.loads(json.dumps(dataclasses.asdict(config)))) == config
    model = tiny_model(architecture="ADI")
    assert TransformerXL.from_config(model.get_config()).config == ModelConfig(**{**TINY, "architecture": "ADI"})
    block = StochasticBlock(candidates(), gumbel_per_example=True)
    rebuilt = StochasticBlock.from_config(block.get_config())
    assert [type(c) for c in rebuilt.candidates] == [AttentionBlock, DenseBlock, IdentityBlock]
    attention, dense, _ = rebuilt.candidates
    assert (attention.num_heads, attention.d_head, dense.d_model, dense.d_ffn) == (2, 8, 16, 32)
    assert rebuilt.gumbel_per_example


def test_parameter_counts_and_the_summary_cover_every_weight():
    for architecture in (None, "AADDDI"):
        model = tiny_model(architecture=architecture, pre_norm=True)
        counts = count_parameters(model)
        total = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        assert counts["total"] == total
        assert counts["total"] == sum(value for key, value in counts.items() if key != "total")
        lines = model.summary_lines(batch_size=2, seq_len=5)
        layers = [int(line.split()[-1].replace(",", "")) for line in lines[1:-1]]
        assert sum(layers) == total and lines[-1].split()[-1] == f"{total:,}"
        assert "?" not in "".join(lines) and "[2, 5, 16]" in lines[2]


def test_tied_embeddings_share_the_shortlist_weights():
    untied, tied = tiny_model(), tiny_model(tie_embeddings=True)
    shortlist = TINY["cutoffs"][0]
    assert count_parameters(untied)["total"] - count_parameters(tied)["total"] == shortlist * TINY["d_model"]
    assert count_parameters(tied)["total"] == sum(int(np.prod(v.shape)) for v in tied.trainable_variables)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_keeps_the_expected_fraction_and_rescales(rate):
    layer = Dropout(rate, seed=0)
    outputs = layer(tf.ones([200, 500]), training=True).numpy()
    kept = outputs != 0
    draws = kept.size
    assert abs(kept.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / draws)
    np.testing.assert_allclose(outputs[kept], 1 / (1 - rate), rtol=1e-6)
    assert not np.array_equal(layer(tf.ones([200, 500]), training=True).numpy() != 0, kept)  # A new mask each call.
    np.testing.assert_array_equal(layer(tf.ones([3, 5]), training=False), np.ones([3, 5]))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_unscaled_relu_dropout_then_its_scale_equals_relu_then_dropout_in_value_and_gradient(dtype):
    # Equal seeds draw equal masks, so the fused layer must match the two steps it replaces.
    fused, dropout = UnscaledReLUDropout(0.3, seed=7, dtype=dtype), Dropout(0.3, seed=7, dtype=dtype)
    x = tf.cast(tf.random.stateless_normal([6, 40, 50], seed=[1, 2]), dtype)  # Half of it negative.
    upstream = tf.cast(tf.random.stateless_normal([6, 40, 50], seed=[3, 4]), dtype)

    def value_and_gradient(function):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = function(x)
        return y, tape.gradient(y, x, output_gradients=upstream)

    y_fused, dx_fused = value_and_gradient(lambda x: fused(x, training=True) * fused.keep_scale(x.dtype))
    y_steps, dx_steps = value_and_gradient(lambda x: dropout(tf.nn.relu(x), training=True))
    tolerance = 1e-6 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(tf.cast(y_fused, tf.float32), tf.cast(y_steps, tf.float32), rtol=tolerance)
    np.testing.assert_allclose(tf.cast(dx_fused, tf.float32), tf.cast(dx_steps, tf.float32), rtol=tolerance)
    dropped = (y_steps.numpy() == 0) & (x.numpy() > 0)
    assert 0.25 < dropped.sum() / (x.numpy() > 0).sum() < 0.35  # The rate applies to the positive part.
    np.testing.assert_array_equal(fused(x, training=False), tf.nn.relu(x))


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_layer_norm_equals_keras_in_value_and_gradients(dtype):
    ours, keras_norm = LayerNorm(epsilon=1e-5, dtype=dtype), keras.layers.LayerNormalization(epsilon=1e-5, dtype=dtype)
    x = tf.random.stateless_normal([4, 7, 32], seed=[5, 6]) * 3.0 + 1.0
    for layer in (ours, keras_norm):
        layer.build(x.shape)
        layer.gamma.assign(tf.random.stateless_normal([32], seed=[7, 8]))
        layer.beta.assign(tf.random.stateless_normal([32], seed=[9, 10]))
    x = tf.cast(x, ours.compute_dtype)
    upstream = tf.random.stateless_normal([4, 7, 32], seed=[11, 12])

    def value_and_gradients(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.cast(layer(x), tf.float32)
        return [y, *tape.gradient(y, [x, layer.gamma, layer.beta], output_gradients=upstream)]

    tolerance = 1e-5 if dtype == "float32" else 2e-2
    for got, want in zip(value_and_gradients(ours), value_and_gradients(keras_norm)):
        np.testing.assert_allclose(tf.cast(got, tf.float32), tf.cast(want, tf.float32), rtol=tolerance, atol=tolerance)


def test_dense_block_is_the_feed_forward_network_written_out():
    block = DenseBlock(6, 20, dropout_rate=0.4)
    x = np.random.default_rng(0).normal(size=(2, 3, 6)).astype(np.float32)
    block.build(x.shape)
    w1, b1, w2, b2 = (np.asarray(w, np.float64) for w in (block.inner.kernel, block.inner.bias,
                                                           block.outer.kernel, block.outer.bias))
    summed = x + np.maximum(x @ w1 + b1, 0) @ w2 + b2
    expected = (summed - summed.mean(-1, keepdims=True)) / np.sqrt(summed.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(block(x, training=False), expected, atol=1e-5)


def test_dense_block_in_training_is_dropout_relu_and_layers_written_out():
    block = DenseBlock(6, 20, dropout_rate=0.4)
    x = tf.random.stateless_normal([2, 3, 6], seed=[1, 2])
    block.build(x.shape)
    # Reference dropouts with the block's seed states draw the block's masks.
    inner_dropout, outer_dropout = Dropout(0.4), Dropout(0.4)
    inner_dropout.seed_generator.state.assign(block.inner_dropout.seed_generator.state)
    outer_dropout.seed_generator.state.assign(block.dropout.seed_generator.state)
    w1, b1, w2, b2 = block.inner.kernel, block.inner.bias, block.outer.kernel, block.outer.bias

    def written_out(x):
        hidden = inner_dropout(tf.nn.relu(tf.tensordot(x, w1, 1) + b1), training=True)
        summed = x + outer_dropout(tf.tensordot(hidden, w2, 1) + b2, training=True)
        mean, variance = tf.nn.moments(summed, axes=[-1], keepdims=True)
        return (summed - mean) / tf.sqrt(variance + 1e-5)

    results = []
    for function in (lambda x: block(x, training=True), written_out):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = function(x) * tf.range(1.0, 7.0)
        results.append([y, *tape.gradient(y, [x, w1, b1, w2, b2])])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_compiled_argmax_evaluation_runs_only_the_chosen_candidates_and_equals_the_fixed_model(jit_compile):
    supernet = tiny_model(dropout_rate=0.0)
    for block, logits in zip(supernet.blocks, ([0.0, 0.0, 0.4], [0.0, 2.0, 1.0], [0.3, 0.0, 0.0])):
        block.arch_logits.assign(logits)
    fixed = copy_choices_into_fixed_model(supernet, "IDA")
    poison_the_unchosen(supernet, "IDA")
    segment = random_tokens((2, 5), seed=3)
    step = tf.function(lambda model, mode: model.token_nll(segment, segment, model.initial_memory(2), eval_mode=mode)[0],
                       jit_compile=jit_compile)
    np.testing.assert_allclose(step(supernet, "argmax"), step(fixed, "mix"), atol=1e-5)
    assert np.all(np.isnan(step(supernet, "mix")))  # Mixing runs every candidate.


def test_single_path_runs_one_sampled_candidate_and_passes_a_gradient_to_every_logit():
    x, memory, valid_length = block_inputs()
    block = StochasticBlock(candidates(), single_path=True)
    block.build(x.shape)
    block.arch_logits.assign([0.3, -0.2, 0.1])
    outputs = [candidate(x, memory, valid_length, training=True) for candidate in block.candidates]
    chosen = set()
    for _ in range(12):
        with tf.GradientTape() as tape:
            y = block(x, memory, valid_length, tau=0.7, training=True)
            total = tf.reduce_sum(y * tf.range(1.0, 17.0))
        gradient = tape.gradient(total, block.arch_logits).numpy()
        matches = [i for i, output in enumerate(outputs) if np.allclose(y, output, rtol=1e-6, atol=1e-6)]
        assert len(matches) == 1  # The block's output is one candidate's, times exactly 1.
        chosen.add(matches[0])
        assert np.all(gradient != 0) and np.all(np.isfinite(gradient))
    assert len(chosen) > 1  # Sampled, not fixed.


@pytest.mark.parametrize("jit_compile", [False, True])
def test_single_path_with_one_hot_pi_trains_as_the_fixed_architecture_without_running_the_others(jit_compile):
    supernet = tiny_model(dropout_rate=0.0, single_path=True)
    for block, choice in zip(supernet.blocks, "ADI"):  # pi one-hot in float32: every Gumbel sample picks the choice.
        block.arch_logits.assign([40.0 if kind == choice else 0.0 for kind in "ADI"])
    fixed = copy_choices_into_fixed_model(supernet, "ADI")
    poison_the_unchosen(supernet, "ADI")
    segment = random_tokens((2, 5), seed=4)

    @tf.function(jit_compile=jit_compile)
    def loss_and_gradients(model):
        with tf.GradientTape() as tape:
            nll, _ = model.token_nll(segment, segment, model.initial_memory(2), tau=0.5, training=True)
            loss = tf.reduce_mean(nll)
        gradients = tape.gradient(loss, [model.embedding.embeddings, *model.output_layer.trainable_weights])
        return [loss] + [tf.convert_to_tensor(gradient) for gradient in gradients]  # The embedding's are sparse.

    for got, want in zip(loss_and_gradients(supernet), loss_and_gradients(fixed)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
