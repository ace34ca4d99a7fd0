"""generate.py: sampling keeps the top-k and the nucleus; data rebuilt otherwise, a damaged export and bad flags
each fail with one line."""
import shutil

import numpy as np
import pytest

import generate
from config import TOKENIZER_FILE
from conftest import build_small_dataset, error_line, make_run, run_script, write_corpus


def test_filter_log_probs_keeps_top_k_and_the_nucleus():
    log_probs = np.log(np.array([0.05, 0.5, 0.1, 0.3, 0.05]))
    assert np.isfinite(generate.filter_log_probs(log_probs, top_k=2)).nonzero()[0].tolist() == [1, 3]
    # The nucleus of 0.75: 0.5 + 0.3 crosses it, so both are kept and nothing else.
    assert np.isfinite(generate.filter_log_probs(log_probs, top_p=0.75)).nonzero()[0].tolist() == [1, 3]
    assert np.isfinite(generate.filter_log_probs(log_probs, top_p=0.85)).nonzero()[0].tolist() == [1, 2, 3]
    assert np.isfinite(generate.filter_log_probs(log_probs)).all()


def test_generate_from_a_checkpoint_refuses_its_data_once_rebuilt_otherwise(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    run = make_run(tmp_path, build_small_dataset(tmp_path / "data", corpus))
    build_small_dataset(tmp_path / "data", corpus, lowercase=False, overwrite=True)
    result = run_script("generate.py", run.checkpoint_dir / "ckpt-1", "--length=2")
    assert "differ: lowercase" in error_line(result, "generate.py")


@pytest.mark.parametrize("damaged", ["model.weights.h5", TOKENIZER_FILE])
def test_a_truncated_export_fails_with_one_line(trained_run, tmp_path, damaged):
    export = shutil.copytree(trained_run.export_dir, tmp_path / "export")
    (export / damaged).write_bytes((export / damaged).read_bytes()[:100])
    assert str(export) in error_line(run_script("generate.py", export), "generate.py")


def test_top_p_zero_is_refused_naming_the_flag():
    result = run_script("generate.py", "logs/base/export", "--top_p=0")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--top_p=0.0: must be in (0, 1]" in result.stderr
