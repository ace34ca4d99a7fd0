"""Shared test settings and helpers: quiet TensorFlow, the optional offline WikiText-2 copy, a tiny model, a small
corpus and run, a small disk to fill and the one-error-line check. Imports no TensorFlow itself: the helpers that
need it import it.
"""
import contextlib
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

# CI places the shared folder beside the checkout; tests that need the real corpus skip without it.
SHARED_WIKITEXT2 = REPO_ROOT.parent / "shared" / "data" / "wikitext-2"

# A model small enough for any test: the tests pass a vocab_size and cutoffs that suit their data.
TINY_MODEL = dict(d_model=16, num_heads=2, d_ffn=32, num_layers=3, mem_len=4)

WORDS = "the of and in to a was is for on as with by he at from his an were are".split()


def write_corpus(folder, lines_per_split=(300, 40, 40), seed=0):
    """A small train/valid/test corpus of random words, WikiText-like (leading space, empty lines)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, num_lines in zip(("train", "valid", "test"), lines_per_split):
        lines = [" " + " ".join(rng.choice(WORDS, rng.integers(0, 30))) + " " for _ in range(num_lines)]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


def run_script(*args, timeout=120):
    """Runs a script of the repository as a user would, from its root, capturing its output."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout)


def error_line(result, script):
    """The single `script: error:` line of a failed run, which shows no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{script}: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@contextlib.contextmanager
def tmpfs(folder, options):
    """A tmpfs of its own at `folder`, mounted with mount's -o `options`, unmounted at the end; skips where mounting
    is refused."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (a tiny run takes 1.2)."""
    with tmpfs(tmp_path / "disk", "size=4m") as disk:
        yield disk


def fill(disk, leave=0):
    """Fills the disk but `leave` bytes (to its 4 KiB pages), with a file named filler."""
    with open(disk / "filler", "ab") as filler:
        filler.write(b"\0" * max(shutil.disk_usage(disk).free - leave, 0))
    return disk / "filler"


SMALL_DATA = dict(vocab_size=40, batch_size=4, seq_len=8)


def build_small_dataset(output_dir, corpus, **settings):
    import build_data
    import data_utils

    build_data.build_dataset(output_dir, data_utils.find_split_files(corpus), **{**SMALL_DATA, **settings})
    return output_dir


def build_small_character_dataset(root):
    """A text8-like dataset of 6 short words (text8's alphabet: a-z and space) in root/records; returns its
    directory and metadata."""
    import dataclasses

    import build_data
    import data_utils

    corpus = dataclasses.replace(data_utils.TEXT8, split_bytes=dict(train=1200, valid=200, test=200))
    words = [b"the", b"of", b"and", b"a", b"cat", b"sat"]
    (root / "text8").write_bytes(b" ".join(np.random.default_rng(0).choice(words, 600))[:1600])
    metadata = build_data.build_dataset(root / "records", data_utils.corpus_spans(corpus, root), alphabet=corpus.alphabet,
                                        batch_size=4, seq_len=8, source_name="text8")
    return root / "records", metadata


def make_run(root, data_dir):
    """A run directory on `data_dir` with its config.json, a checkpoint ckpt-1 and an export of untrained weights,
    computing in float32 as its config says."""
    import tensorflow as tf

    import checkpoints
    import data_utils
    import runs
    from config import ModelConfig, TrainConfig

    metadata = data_utils.load_metadata(data_dir)
    model_config = ModelConfig(vocab_size=metadata["vocab_size"], cutoffs=(), **TINY_MODEL)
    run = runs.Run(root / "run")
    run.directory.mkdir()
    run.check_or_save_config(runs.config_record(model_config, TrainConfig(precision="float32"), data_dir, metadata))
    model = checkpoints.build_model(model_config)
    tf.train.Checkpoint(model_variables=list(model.variables)).save(str(run.checkpoint_dir / "ckpt"))  # ckpt-1, the latest.
    checkpoints.export(model, run, data_dir)
    return run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run directory of a tiny model on a small dataset, as training leaves one (config, checkpoint and
    export, by make_run), but with untrained weights: for the tests that read a run, not its scores."""
    root = tmp_path_factory.mktemp("trained")
    return make_run(root, build_small_dataset(root / "data", write_corpus(root / "corpus")))
