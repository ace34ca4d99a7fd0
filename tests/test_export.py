"""export.py: score equals evaluate.py's NLL on the same text, a SuperNet's in either eval mode, and a batch of texts
scores as each text alone; the export loads in a Python without this repository and generates and scores as the
model does in process; a character dataset's export maps bytes in its graph; export.py rewrites a run's export in
argmax mode and refuses an export as its source."""
import json
import shutil
import subprocess
import sys

import keras
import pytest
import tensorflow as tf

import checkpoints
import data_utils
import evaluate
import export
from config import ModelConfig
from conftest import (REPO_ROOT, TINY_MODEL, build_small_character_dataset, build_small_dataset, error_line, make_run,
                      run_script, write_corpus)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """(an untrained SuperNet of TINY_MODEL, its pi random, with an adaptive softmax; a small dataset of one stream
    per batch, so that evaluate.py reads its test split as one text; that text)."""
    root = tmp_path_factory.mktemp("scored")
    corpus = write_corpus(root / "corpus")
    data_dir = build_small_dataset(root / "data", corpus, batch_size=1)
    keras.utils.set_random_seed(0)
    model_config = ModelConfig(vocab_size=data_utils.load_metadata(data_dir)["vocab_size"], cutoffs=(10, 20),
                               **TINY_MODEL)
    model = checkpoints.build_model(model_config)
    for logits in model.arch_variables:
        logits.assign(tf.random.normal([3], stddev=2.0))
    return model, data_dir, (corpus / "test.txt").read_text()


def score(model, data_dir, texts, eval_mode="mix"):
    text_model = export.TextModel(model, data_utils.load_tokenizer(data_dir),
                                  data_utils.load_metadata(data_dir)["seq_len"], eval_mode)
    scores = tf.function(text_model.score, input_signature=export.SCORE_SIGNATURE)(tf.constant(texts))
    return scores["nll"].numpy(), scores["tokens"].numpy()


@pytest.mark.parametrize("eval_mode", ["mix", "argmax"])
def test_score_equals_evaluate_nll_on_the_same_text(scored, eval_mode):
    model, data_dir, text = scored
    split = data_utils.load_metadata(data_dir)["splits"]["test"]
    expected = evaluate.evaluate(model, data_utils.make_dataset(data_dir, "test"), split, batch_size=1,
                                 jit_compile="off", eval_mode=eval_mode)
    nll, tokens = score(model, data_dir, [text], eval_mode)
    assert tokens[0] == expected["tokens"] > 20 * TINY_MODEL["mem_len"]  # Many segments, each with its memory.
    assert nll[0] / tokens[0] == pytest.approx(expected["loss"], rel=1e-6)


def test_a_batch_of_texts_scores_as_each_text_alone(scored):
    model, data_dir, text = scored
    texts = [text, "", " the of and\n", text[:300]]
    batch = score(model, data_dir, texts)
    alone = [score(model, data_dir, [one]) for one in texts]
    assert batch[1].tolist() == [tokens[0] for _, tokens in alone] and batch[1][1] == 0
    assert batch[0] == pytest.approx([nll[0] for nll, _ in alone], rel=1e-6)


GENERATE_ARGUMENTS = [dict(prompt=["the of", "", "and"], max_new_tokens=12, temperature=0.0, top_k=0, top_p=1.0, seed=0,
                           stop_at_eol=False),
                      dict(prompt=["the of"] * 2, max_new_tokens=12, temperature=1.0, top_k=5, top_p=0.9, seed=3,
                           stop_at_eol=True)]
TEXTS = ["the of and\n", " in to a was the of an were\nhe at"]

# Run by a Python in isolated mode (-I: no PYTHONPATH, no current directory on sys.path) from another directory.
STANDALONE = """
import json, sys
import tensorflow as tf, tensorflow_text
model = tf.saved_model.load(sys.argv[1])
samples = [model.generate(**arguments).numpy().tolist() for arguments in json.loads(sys.argv[3])]
scores = model.score(json.loads(sys.argv[4]))
from_repository = [name for name, module in sys.modules.items() if sys.argv[2] in str(getattr(module, "__file__", ""))]
assert not from_repository and not any(sys.argv[2] in path for path in sys.path), (from_repository, sys.path)
print(json.dumps(dict(samples=[[text.decode() for text in batch] for batch in samples],
                      nll=scores["nll"].numpy().tolist(), tokens=scores["tokens"].numpy().tolist())))
"""


@pytest.mark.slow
def test_the_export_loads_and_generates_in_a_python_without_this_repository(trained_run, tmp_path):
    result = subprocess.run([sys.executable, "-I", "-c", STANDALONE, str(trained_run.export_dir), str(REPO_ROOT),
                             json.dumps(GENERATE_ARGUMENTS), json.dumps(TEXTS)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    standalone = json.loads(result.stdout.splitlines()[-1])
    model, record = checkpoints.load_model(trained_run.export_dir)
    text_model = export.TextModel(model, data_utils.load_tokenizer(trained_run.export_dir), record["data"]["seq_len"])
    generate = tf.function(text_model.generate, input_signature=export.GENERATE_SIGNATURE)
    assert standalone["samples"] == [[text.decode() for text in generate(**arguments).numpy()]
                                     for arguments in GENERATE_ARGUMENTS]
    assert all(sample.startswith("the of") for sample in standalone["samples"][0][:1] + standalone["samples"][1])
    assert all("\n" not in sample for sample in standalone["samples"][1])  # Each stopped at its line's end.
    nll, tokens = score(model, trained_run.export_dir, TEXTS)
    assert standalone["tokens"] == tokens.tolist() and standalone["nll"] == pytest.approx(nll.tolist(), rel=1e-6)


def test_a_character_datasets_export_maps_its_bytes_in_the_graph(tmp_path):
    data_dir, _ = build_small_character_dataset(tmp_path)
    loaded = tf.saved_model.load(str(make_run(tmp_path, data_dir).export_dir))
    sample = loaded.generate(["the ca"], 20, 0.0, 0, 1.0, 0, False).numpy()[0]
    assert sample.startswith(b"the ca") and set(sample) <= set(b"abcdefghijklmnopqrstuvwxyz \n")
    # Each byte and line end is scored but the first.
    assert loaded.score(["the cat", "a\n\n"])["tokens"].numpy().tolist() == [7, 2]
    with pytest.raises(tf.errors.InvalidArgumentError, match="bytes outside the alphabet of the dataset"):
        loaded.score(["The cat."])


@pytest.mark.slow
def test_export_py_rewrites_a_runs_export_with_a_supernet_in_argmax_mode(trained_run, tmp_path):
    run_dir = shutil.copytree(trained_run.directory, tmp_path / "run")
    assert "is an export" in error_line(run_script("export.py", run_dir / "export"), "export.py")
    result = run_script("export.py", run_dir, "--eval_mode=argmax")
    assert result.returncode == 0, result.stderr
    loaded = tf.saved_model.load(str(run_dir / "export"))  # Kept: its functions do not keep its variables alive.
    scores = loaded.score(TEXTS)
    model, _ = checkpoints.load_model(run_dir)
    argmax, mix = (score(model, run_dir / "export", TEXTS, eval_mode) for eval_mode in ("argmax", "mix"))
    assert scores["nll"].numpy() == pytest.approx(argmax[0], rel=1e-6) and not argmax[0] == pytest.approx(mix[0])
