"""Shared test settings: quiet TensorFlow and locate the optional offline WikiText-2 copy."""
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

# CI places the shared folder beside the checkout; tests that need the real corpus skip without it.
SHARED_WIKITEXT2 = REPO_ROOT.parent / "shared" / "data" / "wikitext-2"
