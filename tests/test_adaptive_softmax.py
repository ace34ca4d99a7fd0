"""Adaptive softmax: normalisation, NLL against the full distribution, the plain-softmax case, padding,
and the static-capacity rows against every row."""
import re
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from adaptive_softmax import AdaptiveSoftmax, tail_capacities

VOCAB, D_MODEL = 50, 16


def built_layer(cutoffs, **kwargs):
    layer = AdaptiveSoftmax(VOCAB, cutoffs, **kwargs)
    layer.build((None, None, D_MODEL))
    rng = np.random.default_rng(0)  # Non-zero biases and larger weights make the test sharper.
    for weight in layer.weights:
        weight.assign(rng.normal(0, 0.5, weight.shape).astype(np.float32))
    return layer


def random_inputs(batch=3, length=7, seed=1):
    rng = np.random.default_rng(seed)
    hidden = tf.constant(rng.normal(size=(batch, length, D_MODEL)), tf.float32)
    labels = tf.constant(rng.integers(1, VOCAB, (batch, length)), tf.int32)
    return hidden, labels


@pytest.mark.parametrize("cutoffs", [(), (10,), (10, 30)])
def test_full_log_probabilities_are_normalised(cutoffs):
    hidden, _ = random_inputs()
    log_probs = built_layer(cutoffs).log_probs(hidden).numpy()
    assert log_probs.shape == (3, 7, VOCAB)
    np.testing.assert_allclose(np.log(np.exp(log_probs.astype(np.float64)).sum(-1)), 0.0, atol=1e-5)


@pytest.mark.parametrize("gather_rows", [False, True])
@pytest.mark.parametrize("cutoffs", [(10,), (10, 30), (1, 2, 49)])
def test_nll_equals_minus_log_prob_of_label_in_every_cluster(cutoffs, gather_rows):
    layer = built_layer(cutoffs)
    hidden, _ = random_inputs(batch=4, length=VOCAB // 4)
    labels = tf.reshape(tf.range(1, 1 + 4 * (VOCAB // 4)), [4, VOCAB // 4])  # Every cluster is hit.
    expected = -np.take_along_axis(layer.log_probs(hidden).numpy(), labels.numpy()[..., None], -1)[..., 0]
    np.testing.assert_allclose(layer(hidden, labels, gather_rows=gather_rows).numpy(), expected, rtol=1e-5, atol=1e-5)


def numpy_log_prob(layer, hidden, labels):
    """Grave et al.'s factorisation written out in float64: log p(head class) + log p(id | its tail cluster)."""
    log_softmax = lambda z: z - z.max(-1, keepdims=True) - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
    h = hidden.numpy().astype(np.float64)
    head = log_softmax(h @ layer.head_kernel.numpy() + layer.head_bias.numpy())
    result = np.empty(labels.shape)
    for index, label in np.ndenumerate(labels.numpy()):
        if label < layer.shortlist_size:
            result[index] = head[index][label]
            continue
        i = next(i for i, (start, stop) in enumerate(layer.clusters) if start <= label < stop)
        tail = log_softmax(h[index] @ layer.tail_projections[i].numpy() @ layer.tail_kernels[i].numpy()
                           + layer.tail_biases[i].numpy())
        result[index] = head[index][layer.shortlist_size + i] + tail[label - layer.clusters[i][0]]
    return result


@pytest.mark.parametrize("gather_rows", [False, True])
def test_nll_matches_a_numpy_reference(gather_rows):
    layer = built_layer((10, 30))
    hidden, labels = random_inputs(batch=4, length=12)
    expected = -numpy_log_prob(layer, hidden, labels)
    np.testing.assert_allclose(layer(hidden, labels, gather_rows=gather_rows).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_gathered_rows_give_the_same_loss_and_gradients():
    layer = built_layer((10, 30))
    hidden, labels = random_inputs()
    labels = tf.where(labels >= 30, 5, labels)  # The last tail gets no row at all.
    hidden = tf.Variable(hidden)

    every_rows = loss_and_gradients(layer, hidden, labels, gather_rows=False)
    for every_row, gathered in zip(every_rows, loss_and_gradients(layer, hidden, labels, gather_rows=True)):
        np.testing.assert_allclose(gathered, every_row, rtol=1e-5, atol=1e-7)


def tail_counts(layer, labels):
    return [int(np.sum((labels.numpy() >= start) & (labels.numpy() < stop))) for start, stop in layer.clusters]


def loss_and_gradients(layer, hidden, labels, **options):
    with tf.GradientTape() as tape:
        tape.watch(hidden)
        loss = tf.reduce_mean(layer(hidden, labels, **options))
    return [loss] + tape.gradient(loss, [hidden] + layer.trainable_weights)


# Each tail's capacity is its row count plus this: 0 fits exactly, -1 overflows by one row.
@pytest.mark.parametrize("spare", [(0, 0), (5, 0), (-1, 3), (2, -1), (-1, -1)])
def test_capacity_rows_compiled_give_the_every_row_loss_and_gradients(spare):
    layer = built_layer((10, 30))
    hidden, labels = random_inputs(batch=4, length=9)
    capacities = tuple(count + extra for count, extra in zip(tail_counts(layer, labels), spare))
    assert min(capacities) >= 1 and max(capacities) < 36  # Neither tail falls back to every row by its capacity alone.
    every_row = loss_and_gradients(layer, hidden, labels)
    compiled = tf.function(loss_and_gradients, jit_compile=True)(layer, hidden, labels, tail_capacities=capacities)
    for capacity_rows, expected in zip(compiled, every_row):
        np.testing.assert_allclose(capacity_rows, expected, rtol=1e-5, atol=1e-6)


def test_capacity_rows_compile_with_hidden_labels_and_weights_as_runtime_inputs():
    """An input XLA folds in as a constant recompiles the step whenever it changes: every step."""
    layer = built_layer((10, 30))
    hidden, labels = random_inputs(batch=4, length=9)
    compiled = tf.function(loss_and_gradients, jit_compile=True)
    hlo = compiled.experimental_get_compiler_ir(layer, hidden, labels, tail_capacities=(8, 8))(stage="hlo")
    entry = hlo[hlo.index("ENTRY"):]
    parameters = re.findall(r"= (\w+\[[\d,]*\])\S* parameter\(", entry[: entry.index("\n}")])  # f32[4,9,16]
    expected = [f"s32[{','.join(map(str, labels.shape))}]"] + [
        f"f32[{','.join(map(str, tensor.shape))}]" for tensor in [hidden] + layer.trainable_weights]
    assert sorted(parameters) == sorted(expected)


def test_capacity_of_every_row_or_more_runs_every_row():
    layer = built_layer((10, 30))
    hidden, labels = random_inputs()
    np.testing.assert_allclose(layer(hidden, labels, tail_capacities=(21, 100)), layer(hidden, labels), rtol=1e-6)


@pytest.mark.parametrize("options", [{"tail_capacities": (4,)}, {"tail_capacities": (4, 0)},
                                     {"tail_capacities": (4, 2.5)}, {"tail_capacities": (4, 4), "gather_rows": True}])
def test_invalid_tail_capacities_are_rejected_with_the_value(options):
    hidden, labels = random_inputs()
    with pytest.raises(ValueError, match="tail_capacities="):
        built_layer((10, 30))(hidden, labels, **options)


def test_tail_capacities_need_static_shapes():
    layer = built_layer((10, 30))
    spec = [tf.TensorSpec([None, 7, D_MODEL], tf.float32), tf.TensorSpec([None, 7], tf.int32)]
    nll = tf.function(lambda hidden, labels: layer(hidden, labels, tail_capacities=(4, 4)), input_signature=spec)
    with pytest.raises(ValueError, match="static shape"):
        nll(*random_inputs())


def test_tail_capacities_round_up_with_headroom_within_bounds():
    assert tail_capacities([0.2335, 0.1088], 1024) == (299, 140)  # ceil(298.88), ceil(139.26)
    assert tail_capacities([0.25, 0.25], 64, headroom=1.0) == (16, 16)  # Already whole: no extra row.
    assert tail_capacities([0.25], 65, headroom=1.0) == (17,)
    assert tail_capacities([0.001, 0.0], 1024) == (8, 8)  # The minimum.
    assert tail_capacities([0.001], 1024, minimum=2) == (2,)
    assert tail_capacities([0.9], 100) == (100,)  # Never more than every row.
    with pytest.raises(ValueError, match="headroom=0.9"):
        tail_capacities([0.2], 100, headroom=0.9)
    with pytest.raises(ValueError, match=r"shares=\[1.5\]"):
        tail_capacities([1.5], 100)


def test_capacity_rows_compile_quickly_at_the_base_shape():
    """1024 tokens, d_model 128, vocab 12000, cutoffs 250/2500: about 1.5 s on 2 CPU cores."""
    layer = AdaptiveSoftmax(12000, (250, 2500))
    layer.build((None, None, 128))
    rng = np.random.default_rng(0)
    hidden = tf.constant(rng.normal(size=(32, 32, 128)), tf.float32)
    labels = tf.constant(rng.choice([5, 1000, 5000], p=[0.66, 0.23, 0.11], size=(32, 32)), tf.int32)
    capacities = tail_capacities([0.2335, 0.1088], 1024)
    start = time.perf_counter()
    compiled = tf.function(loss_and_gradients, jit_compile=True)(layer, hidden, labels, tail_capacities=capacities)
    assert time.perf_counter() - start < 60
    np.testing.assert_allclose(compiled[0], loss_and_gradients(layer, hidden, labels)[0], rtol=1e-5)


def test_no_cutoffs_is_a_plain_softmax_computed_independently():
    layer = built_layer(())
    hidden, labels = random_inputs()
    logits = hidden.numpy() @ layer.head_kernel.numpy() + layer.head_bias.numpy()
    logits = logits.astype(np.float64)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    expected = log_z - np.take_along_axis(logits, labels.numpy()[..., None], -1)[..., 0]
    np.testing.assert_allclose(layer(hidden, labels).numpy(), expected, rtol=1e-5)
    assert len(layer.weights) == 2  # One dense layer, no tails.


# Capacities 12 of 21 rows: each tail fits, and pad rows can fill its spare slots.
@pytest.mark.parametrize("options", [{}, {"gather_rows": True}, {"tail_capacities": (12, 12)}])
def test_padding_scores_nothing_and_passes_no_gradient(options):
    layer = built_layer((10, 30), pad_id=0)
    hidden, labels = random_inputs()
    labels = tf.concat([tf.zeros([3, 2], tf.int32), labels[:, 2:]], axis=1)
    hidden = tf.Variable(hidden)
    with tf.GradientTape() as tape:
        nll = layer(hidden, labels, **options)
        total = tf.reduce_sum(nll)
    gradient = tape.gradient(total, hidden).numpy()
    assert np.all(nll.numpy()[:, :2] == 0) and np.all(nll.numpy()[:, 2:] > 0)
    assert np.all(gradient[:, :2] == 0) and np.all(np.isfinite(gradient)) and np.any(gradient[:, 2:] != 0)


@pytest.mark.parametrize("cutoffs", [(30, 10), (10, 10), (10, 50), (0, 10), (60,)])
def test_invalid_cutoffs_are_rejected_with_the_value(cutoffs):
    with pytest.raises(ValueError, match="cutoffs="):
        AdaptiveSoftmax(VOCAB, cutoffs)


def test_tail_projections_have_the_widths_of_proj_factor():
    layer = built_layer((10, 30), proj_factor=2)
    assert [p.shape for p in layer.tail_projections] == [(D_MODEL, 8), (D_MODEL, 4)]
    assert [k.shape for k in layer.tail_kernels] == [(8, 20), (4, 20)]


def test_compiled_loss_and_gradients_match_eager():
    layer = built_layer((10, 30))
    hidden, labels = random_inputs()

    eager = loss_and_gradients(layer, hidden, labels)
    compiled = tf.function(loss_and_gradients, jit_compile=True)(layer, hidden, labels)
    np.testing.assert_allclose(compiled[0], eager[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(compiled[1:], eager[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_keeps_float32_log_probabilities():
    layer = AdaptiveSoftmax(VOCAB, (10, 30), dtype="mixed_bfloat16")
    hidden, labels = random_inputs()
    for options in ({}, {"gather_rows": True}, {"tail_capacities": (12, 12)}):
        nll = layer(tf.cast(hidden, tf.bfloat16), labels, **options)
        assert nll.dtype == tf.float32 and np.all(np.isfinite(nll.numpy()))
    assert layer.log_probs(tf.cast(hidden, tf.bfloat16)).dtype == tf.float32


def test_config_round_trip_rebuilds_the_same_clusters_and_widths():
    rebuilt = AdaptiveSoftmax.from_config(AdaptiveSoftmax(VOCAB, (10, 30), proj_factor=2, pad_id=3).get_config())
    assert (rebuilt.vocab_size, rebuilt.shortlist_size, rebuilt.clusters, rebuilt.pad_id) == (VOCAB, 10, [(10, 30), (30, VOCAB)], 3)
    rebuilt.build((2, 16))
    assert [tuple(p.shape) for p in rebuilt.tail_projections] == [(16, 8), (16, 4)]  # 16 / 2, 16 / 4.


@pytest.mark.parametrize("cutoffs", [(), (10, 30)])
def test_tied_shortlist_uses_the_embedding_rows(cutoffs):
    embedding = keras.layers.Embedding(VOCAB, D_MODEL)
    embedding.build((None,))
    layer = AdaptiveSoftmax(VOCAB, cutoffs, tied_embedding=embedding)
    layer.build((None, None, D_MODEL))
    shortlist = cutoffs[0] if cutoffs else VOCAB
    assert layer.head_kernel.shape == (D_MODEL, len(cutoffs))  # Only the cluster logits are its own.
    hidden, labels = random_inputs()
    logits = hidden.numpy() @ embedding.embeddings.numpy()[:shortlist].T + layer.head_bias.numpy()[:shortlist]
    head = np.concatenate([logits, hidden.numpy() @ layer.head_kernel.numpy() + layer.head_bias.numpy()[shortlist:]], -1)
    log_probs = layer.log_probs(hidden).numpy()
    expected = head - np.log(np.exp(head).sum(-1, keepdims=True))
    np.testing.assert_allclose(log_probs[..., :shortlist], expected[..., :shortlist], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, rtol=1e-5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(hidden, labels))
    assert np.any(tape.gradient(loss, embedding.embeddings).numpy() != 0)
