"""evaluate.py: data tokenized unlike the model's, a damaged export and a damaged or missing data file each fail
with one line; the cached evaluation step does not outlive its model; both validations in one pass score as each
alone."""
import gc
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
