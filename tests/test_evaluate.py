"""evaluate.py: data tokenized unlike the model's, a damaged export and a damaged or missing data file each fail
with one line; the cached evaluation step does not outlive its model; both validations in one pass score as each
alone; any batch, segment, memory and clamp length scores the split's tokens, as a naive loop does."""
import gc
import json
import math
import pathlib
import re
import shutil
import weakref

import numpy as np
import pytest
import tensorflow as tf

import checkpoints
import data_utils
import evaluate
from config import ModelConfig
from conftest import TINY_MODEL, build_small_dataset, error_line, run_script, write_corpus
from model import TransformerXL


@pytest.mark.parametrize("corpus_seed,settings,named", [
    (0, dict(vocab_size=36), "36 ids"),
    (0, dict(lowercase=False), "differ: lowercase"),  # Same size, other ids: a plausible but meaningless perplexity.
    (1, {}, "differ: source_sha256"),
])
def test_data_tokenized_unlike_the_training_data_is_refused(trained_run, tmp_path, corpus_seed, settings, named):
    other = build_small_dataset(tmp_path / "other", write_corpus(tmp_path / "corpus", seed=corpus_seed), **settings)
    record = trained_run.read_config()
    with pytest.raises(data_utils.DataError, match=named):
        data_utils.check_data_matches_model(other, record)


def test_data_laid_out_otherwise_is_accepted_and_scored_whole(trained_run, tmp_path):
    """Batch size and segment length only arrange the ids: the model scores any arrangement, every token once
    but the first of each of the batch's rows, which has no context."""
    record = trained_run.read_config()
    own = pathlib.Path(record["data_dir"])
    other = build_small_dataset(tmp_path / "other", write_corpus(tmp_path / "corpus"), batch_size=2, seq_len=5)
    data_utils.check_data_matches_model(other, record)  # Raises DataError if refused.
    model, _ = checkpoints.load_model(trained_run.export_dir)
    tokens = {}
    for data_dir in (own, other):
        metadata = data_utils.load_metadata(data_dir)
        scores = evaluate.evaluate(model, data_utils.make_dataset(data_dir, "valid"), metadata["splits"]["valid"],
                                   metadata["batch_size"], jit_compile="off")
        assert math.isfinite(scores["loss"])
        tokens[data_dir] = scores["tokens"] + metadata["batch_size"]
    assert tokens[own] == tokens[other] > 4


def test_evaluate_refuses_another_vocabulary_with_one_line(trained_run, tmp_path):
    other = build_small_dataset(tmp_path / "other", write_corpus(tmp_path / "corpus"), vocab_size=36)
    result = run_script("evaluate.py", trained_run.export_dir, f"--data_dir={other}", "--jit_compile=off")
    assert str(other) in error_line(result, "evaluate.py")


def test_the_evaluation_step_compiles_once_per_model_and_dies_with_it():
    model = TransformerXL(ModelConfig(vocab_size=40, cutoffs=(10,), **TINY_MODEL))
    model.build((2, 8))
    step = evaluate.evaluation_step(model, ("mix",), False)
    tokens = tf.ones([2, 8], tf.int32)
    (nll,), scored, _ = step(tokens, tokens, [model.initial_memory(2)])
    assert scored == 16 and nll > 0
    assert evaluate.evaluation_step(model, ("mix",), False) is step
    alive = weakref.ref(model)
    del model, step
    gc.collect()
    assert alive() is None


def test_both_validations_in_one_pass_equal_each_mode_scored_alone():
    model = TransformerXL(ModelConfig(vocab_size=40, cutoffs=(10,), **TINY_MODEL))
    model.build((2, 8))
    for block, logits in zip(model.blocks, ([0.0, 1.0, 0.0], [1.0, 0.0, 0.5], [0.0, 0.0, 1.0])):
        block.arch_logits.assign(logits)  # The argmax architecture "DAI" differs from the pi mixture.
    tokens = np.random.default_rng(0).integers(1, 40, (4, 2, 9))
    dataset = tf.data.Dataset.from_tensor_slices((tokens[:, :, :-1], tokens[:, :, 1:]))  # 4 batches of [2, 8].
    both = evaluate.evaluate_both_ways(model, dataset, dict(words=50), batch_size=2, jit_compile="off", max_batches=0)
    for mode, prefix in (("mix", ""), ("argmax", "argmax_")):
        alone = evaluate.evaluate(model, dataset, dict(words=50), 2, "off", eval_mode=mode)
        for key, value in alone.items():
            assert both[prefix + key] == pytest.approx(value, rel=1e-9)
    assert both["argmax_loss"] != both["loss"]  # Two different models were scored, not one twice.


def test_a_truncated_export_fails_with_one_line(trained_run, tmp_path):
    export = shutil.copytree(trained_run.export_dir, tmp_path / "export")
    (export / "model.weights.h5").write_bytes((export / "model.weights.h5").read_bytes()[:100])
    assert str(export) in error_line(run_script("evaluate.py", export), "evaluate.py")



def cut_mid_record(path):
    path.write_bytes(path.read_bytes()[:-10])


def cut_at_a_record_boundary(path):
    records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records[:-1]:
            writer.write(record)


@pytest.mark.parametrize("split,damage,named", [
    ("valid", cut_mid_record, r"damaged \(batch \d+ of \d+ does not read: truncated record at \d+"),
    ("valid", cut_at_a_record_boundary, r"damaged \(it ends after batch \d+ of \d+\)"),  # Would score part of it.
    ("test", pathlib.Path.unlink, "no such file"),
])
def test_a_damaged_or_missing_split_file_fails_with_one_line_naming_it(trained_run, tmp_path, split, damage, named):
    data_dir = shutil.copytree(trained_run.read_config()["data_dir"], tmp_path / "data")
    path = data_dir / data_utils.load_metadata(data_dir)["splits"][split]["files"][0]
    damage(path)
    result = run_script("evaluate.py", trained_run.export_dir, f"--data_dir={data_dir}", f"--split={split}",
                        "--jit_compile=off")
    assert re.match(rf"evaluate.py: error: {re.escape(str(path))}: {named}.*rebuild", error_line(result, "evaluate.py"))

def test_bits_per_character_of_a_uniform_model_is_log2_of_the_vocabulary_per_token():
    model = TransformerXL(ModelConfig(vocab_size=8, cutoffs=(), **TINY_MODEL))
    model.build((2, 8))
    for weight in model.output_layer.weights:
        weight.assign(tf.zeros_like(weight))  # Zero logits: every token has probability 1/8, NLL ln 8.
    tokens = np.random.default_rng(0).integers(1, 8, (4, 2, 9))
    dataset = tf.data.Dataset.from_tensor_slices((tokens[:, :, :-1], tokens[:, :, 1:]))  # 64 scored tokens.
    # A character corpus (one token a character): 64 x 3 bits / 64 characters.
    scores = evaluate.evaluate(model, dataset, dict(characters=64), 2, "off")
    assert scores["bits_per_character"] == pytest.approx(3.0, rel=1e-6)
    assert scores["perplexity"] == pytest.approx(8.0, rel=1e-6) and "word_perplexity" not in scores
    # Two characters a token: 64 x 3 bits / 128 characters; words and characters together give both units.
    scores = evaluate.evaluate(model, dataset, dict(characters=128, words=16), 2, "off")
    assert scores["bits_per_character"] == pytest.approx(1.5, rel=1e-6)
    assert scores["word_perplexity"] == pytest.approx(8.0 ** 4, rel=1e-6)  # exp(64 ln 8 / 16).
    assert math.isnan(evaluate.evaluate(model, dataset, dict(characters=64), 2, "off", max_batches=2)["bits_per_character"])


def valid_split(run):
    """(data_dir, the valid split's metadata, its token stream read back from the TFRecords) of a run."""
    data_dir = run.read_config()["data_dir"]
    counts = data_utils.load_metadata(data_dir)["splits"]["valid"]
    return data_dir, counts, data_utils.read_split_stream(data_dir, "valid")


def test_the_split_read_back_is_the_stream_the_build_tokenized(trained_run):
    data_dir, counts, stream = valid_split(trained_run)
    corpus = pathlib.Path(data_dir).parent / "corpus"  # The fixture's (conftest.trained_run).
    lines = (corpus / "valid.txt").read_text().split("\n")[:-1]
    tokenized = data_utils.load_tokenizer(data_dir).encode(tf.constant(lines)).flat_values.numpy()
    np.testing.assert_array_equal(stream, tokenized)
    assert len(stream) == counts["tokens"]


def test_rebatching_at_the_builds_own_batch_and_length_gives_todays_result(trained_run):
    data_dir, counts, stream = valid_split(trained_run)
    metadata = data_utils.load_metadata(data_dir)
    rebatched = data_utils.context_batched_dataset(stream, metadata["batch_size"], metadata["seq_len"])
    today = data_utils.make_dataset(data_dir, "valid")
    for (inputs, targets), (today_inputs, today_targets) in zip(rebatched, today, strict=True):
        np.testing.assert_array_equal(inputs, today_inputs)
        np.testing.assert_array_equal(targets, today_targets)
    model, _ = checkpoints.load_model(trained_run.export_dir)
    scores = evaluate.evaluate(model, rebatched, counts, metadata["batch_size"], "off")
    assert scores == pytest.approx(evaluate.evaluate(model, today, counts, metadata["batch_size"], "off"), rel=1e-12)
    assert scores["tokens"] == counts["predicted_tokens"]


def naive_total_nll(model, stream, seq_len, carry_memory=True):
    """Total NLL of a stream at batch 1 from the definition: model.token_nll segment by segment, the last
    one shorter, the memory carried from one to the next (or, to show it matters, started afresh)."""
    memory, total = model.initial_memory(1), 0.0
    for start in range(0, len(stream) - 1, seq_len):
        segment = tf.constant(stream[start : start + seq_len + 1][None])
        nll, new_memory = model.token_nll(segment[:, :-1], segment[:, 1:], memory)
        memory = new_memory if carry_memory else memory
        total += float(tf.reduce_sum(tf.cast(nll, tf.float64)))
    return total


def test_at_batch_1_the_total_nll_equals_a_naive_loop_over_the_segments(trained_run):
    stream = valid_split(trained_run)[2][:153]  # 30 segments of 5 and a last one of 2: an eager loop is slow.
    model = TransformerXL(ModelConfig(vocab_size=40, cutoffs=(10,), **{**TINY_MODEL, "mem_len": 7, "clamp_len": 3}))
    model.build((1, 5))
    rng = np.random.default_rng(0)
    for weight in model.weights:  # Weights far from their initial scale, so that the context moves every NLL.
        weight.assign(rng.normal(0.0, 0.5, weight.shape))
    scores = evaluate.evaluate(model, data_utils.context_batched_dataset(stream, 1, 5), {}, 1, "off")
    naive = naive_total_nll(model, stream, 5)
    assert scores["loss"] * scores["tokens"] == pytest.approx(naive, rel=1e-6)
    assert scores["tokens"] == len(stream) - 1
    assert abs(naive_total_nll(model, stream, 5, carry_memory=False) - naive) > 1e-3 * naive  # The memory counts.


@pytest.mark.parametrize("batch_size,seq_len", [(1, 64), (3, 5), (4, 8), (7, 1), (50, 3)])
def test_the_token_count_is_the_splits_at_every_setting(trained_run, batch_size, seq_len):
    """Every token but the first of each stream, with no tail dropped, whatever the batch and segment."""
    _, counts, stream = valid_split(trained_run)
    dataset = data_utils.context_batched_dataset(stream, batch_size, seq_len)
    first_inputs = next(iter(dataset))[0][:, 0].numpy()
    streams = np.count_nonzero(first_inputs != data_utils.PAD_ID)  # Rows holding tokens; with 50, some hold none.
    model = TransformerXL(ModelConfig(vocab_size=40, cutoffs=(), **TINY_MODEL))
    model.build((batch_size, seq_len))
    scores = evaluate.evaluate(model, dataset, counts, batch_size, "off")
    assert scores["tokens"] == counts["tokens"] - streams


def test_evaluate_takes_batch_segment_memory_and_clamp_lengths(trained_run):
    _, _, stream = valid_split(trained_run)
    result = run_script("evaluate.py", trained_run.export_dir, "--batch_size=1", "--seq_len=5", "--mem_len=7",
                        "--clamp_len=3", "--jit_compile=off")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout.splitlines()[-1])
    assert {key: scores[key] for key in ("batch_size", "seq_len", "mem_len", "clamp_len", "tokens")} == dict(
        batch_size=1, seq_len=5, mem_len=7, clamp_len=3, tokens=len(stream) - 1)
    too_many = run_script("evaluate.py", trained_run.export_dir, f"--batch_size={len(stream)}", "--jit_compile=off")
    assert "--batch_size" in error_line(too_many, "evaluate.py")
