"""generate.py: sampling keeps the top-k and the nucleus; a character dataset's bytes round-trip; data rebuilt
otherwise, a damaged export and bad flags each fail with one line."""
import shutil

import numpy as np
import pytest
import tensorflow as tf

import data_utils
import generate
from config import TOKENIZER_FILE
from conftest import build_small_character_dataset, build_small_dataset, error_line, make_run, run_script, write_corpus


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


@pytest.fixture(scope="module")
def character_run(tmp_path_factory):
    """A run of untrained weights on a small text8-like dataset (alphabet: a-z and space)."""
    root = tmp_path_factory.mktemp("characters")
    return make_run(root, build_small_character_dataset(root)[0])


def test_a_character_tokenizer_round_trips_bytes_and_names_those_outside_its_alphabet(character_run):
    tokenizer = data_utils.load_tokenizer(character_run.export_dir)
    ids = tokenizer.encode(tf.constant([b"the cat", b""])).flat_values.numpy()
    assert len(ids) == 9 and ids[7] == ids[8] == data_utils.EOL_ID  # 7 bytes, then each line's end.
    id_of_byte = data_utils.load_metadata(character_run.export_dir)["tokenizer"]["id_of_byte"]  # As the records hold them.
    assert ids[:7].tolist() == [id_of_byte[byte] for byte in b"the cat"]
    assert tokenizer.decode(tf.constant(ids)).numpy() == b"the cat\n\n"
    with pytest.raises(data_utils.DataError, match="bytes outside the dataset's alphabet \\(0x2e, 0x54\\)"):
        tokenizer.encode(tf.constant([b"The cat."]))


def test_generate_continues_a_prompt_in_a_character_datasets_alphabet_and_names_bytes_outside_it(character_run):
    result = run_script("generate.py", character_run.export_dir, "--prompt=the ca", "--length=30")
    assert result.returncode == 0, result.stderr
    text = result.stdout.rstrip("\n")
    assert text.startswith("the ca") and len(text) >= 6 and set(text) <= set("abcdefghijklmnopqrstuvwxyz \n")
    refused = run_script("generate.py", character_run.export_dir, "--prompt=The cat.")
    assert error_line(refused, "generate.py") == ("generate.py: error: --prompt: 'The cat.': bytes outside the dataset's "
                                                  "alphabet (0x2e, 0x54).")
