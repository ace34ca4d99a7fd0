"""Shared test settings: quiet TensorFlow and locate the optional offline WikiText-2 copy."""
import os
import pathlib
import sys

import numpy as np

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
