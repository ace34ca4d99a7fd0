"""evaluate.py and generate.py: data tokenized unlike the model's, a damaged export and bad flags each fail with one line;
runs.py still loads the config.json of runs made before fields were retired or added; the cached
evaluation step does not outlive its model; both validations in one pass score as each alone."""
import gc
import json
import math
import shutil
import subprocess
import sys
import weakref

import numpy as np
import pytest
import tensorflow as tf

import build_data
import data_utils
import evaluate
import runs
import train
from conftest import REPO_ROOT, TINY_MODEL, write_corpus
from model import ModelConfig, TransformerXL

SMALL_SETTINGS = dict(vocab_size=40, batch_size=4, seq_len=8)


def make_run(root, data_dir):
    """A run directory on `data_dir` with its config.json, a checkpoint and an export of untrained weights."""
    metadata = data_utils.load_metadata(data_dir)
    model_config = ModelConfig(vocab_size=metadata["vocab_size"], cutoffs=(), **TINY_MODEL)
    run_dir = root / "run"
    run_dir.mkdir()
    runs.check_or_save_config(run_dir, runs.config_record(model_config, train.TrainConfig(), data_dir, metadata))
    model = runs.build_model(model_config)
    tf.train.Checkpoint(model_variables=list(model.variables)).write(str(run_dir / "checkpoints" / "ckpt-1"))
    runs.export(model, run_dir, data_dir)
    return run_dir


def build(output_dir, corpus, **settings):
    build_data.build_dataset(output_dir, data_utils.find_split_files(corpus), **{**SMALL_SETTINGS, **settings})
    return output_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    return make_run(root, build(root / "data", write_corpus(root / "corpus")))


def run_script(*args):
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def error_line(result, script):
    """The single `script: error:` line of a failed run, which shows no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{script}: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("corpus_seed,settings,named", [
    (0, dict(vocab_size=36), "36 ids"),
    (0, dict(lowercase=False), "differ: lowercase"),  # Same size, other ids: a plausible but meaningless perplexity.
    (1, {}, "differ: source_sha256"),
])
def test_data_tokenized_unlike_the_training_data_is_refused(run_dir, tmp_path, corpus_seed, settings, named):
    other = build(tmp_path / "other", write_corpus(tmp_path / "corpus", seed=corpus_seed), **settings)
    record = json.loads((run_dir / "config.json").read_text())
    with pytest.raises(data_utils.DataError, match=named):
        data_utils.check_data_matches_model(other, record)


def test_data_laid_out_otherwise_is_accepted(run_dir, tmp_path):
    """Batch size and segment length only arrange the ids: the model can score any arrangement."""
    other = build(tmp_path / "other", write_corpus(tmp_path / "corpus"), batch_size=2, seq_len=5)
    data_utils.check_data_matches_model(other, json.loads((run_dir / "config.json").read_text()))


def test_evaluate_refuses_another_vocabulary_with_one_line(run_dir, tmp_path):
    other = build(tmp_path / "other", write_corpus(tmp_path / "corpus"), vocab_size=36)
    result = run_script("evaluate.py", run_dir / "export", f"--data_dir={other}", "--jit_compile=off")
    assert str(other) in error_line(result, "evaluate.py")


def test_generate_from_a_checkpoint_refuses_its_data_once_rebuilt_otherwise(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    run_dir = make_run(tmp_path, build(tmp_path / "data", corpus))
    build(tmp_path / "data", corpus, lowercase=False, overwrite=True)
    result = run_script("generate.py", run_dir / "checkpoints" / "ckpt-1", "--length=2")
    assert "differ: lowercase" in error_line(result, "generate.py")


@pytest.mark.parametrize("script,damaged", [("evaluate.py", "model.weights.h5"), ("generate.py", "model.weights.h5"),
                                            ("generate.py", data_utils.TOKENIZER_FILE)])
def test_truncated_export_fails_with_one_line(run_dir, tmp_path, script, damaged):
    export = shutil.copytree(run_dir / "export", tmp_path / "export")
    (export / damaged).write_bytes((export / damaged).read_bytes()[:100])
    assert str(export) in error_line(run_script(script, export), script)


def test_top_p_zero_is_refused_naming_the_flag():
    result = run_script("generate.py", "logs/base/export", "--top_p=0")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--top_p=0.0: must be in (0, 1]" in result.stderr


def test_a_config_written_before_fields_were_retired_or_added_still_loads_and_resumes(run_dir, tmp_path):
    old_run = tmp_path / "old_run"
    shutil.copytree(run_dir, old_run)
    record = json.loads((old_run / "config.json").read_text())
    current = json.loads(json.dumps(record))
    record["model"].update(eval_mode="argmax", pad_id=0)  # As runs recorded them until these fields were retired.
    record["train"].update(opt_name="adam", weight_decay=0.0)
    del record["train"]["arch_schedule"]  # Added since: older runs had the constant schedule in effect.
    (old_run / "config.json").write_text(json.dumps(record))
    model, loaded = runs.load_model(old_run / "checkpoints" / "ckpt-1")
    (old_run / "checkpoints" / "best").mkdir()
    for path in (old_run / "checkpoints").glob("ckpt-1.*"):
        shutil.copy(path, old_run / "checkpoints" / "best")
    best, _ = runs.load_model(old_run / "checkpoints" / "best" / "ckpt-1")  # The run two folders up.
    assert all(np.array_equal(a, b) for a, b in zip(best.get_weights(), model.get_weights()))
    assert "eval_mode" not in loaded["model"] and "opt_name" not in loaded["train"] and model.config.mem_len == 4
    runs.check_or_save_config(old_run, current)  # Resuming with today's record is not refused.
    record["model"]["pad_id"] = 3
    (old_run / "config.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="model.pad_id=3"):
        runs.load_model(old_run / "checkpoints" / "ckpt-1")


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
