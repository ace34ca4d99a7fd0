"""generate.py: several samples at once, each ending at its line's end when asked, greedy at temperature 0; the
benchmark's eager baseline draws what the compiled sampler draws; a character dataset's bytes round-trip; data rebuilt
otherwise, a damaged or missing export or data file and bad flags each fail with one line naming it."""
import shutil

import pytest
import tensorflow as tf

import checkpoints
import data_utils
import generate
import sampler
from config import METADATA_FILE, TOKENIZER_FILE, ModelConfig
from conftest import (TINY_MODEL, build_small_character_dataset, build_small_dataset, error_line, make_run, run_script,
                      write_corpus)


def test_greedy_samples_of_one_prompt_are_alike_and_end_with_their_line(trained_run):
    result = run_script("generate.py", trained_run.export_dir, "--prompt=the of", "--length=30", "--num_samples=3",
                        "--temperature=0", "--stop_at_eol")
    assert result.returncode == 0, result.stderr
    samples = result.stdout.removesuffix("\n").split("\n---------------\n")
    assert len(samples) == 3 and len(set(samples)) == 1 and "\n" not in samples[0] and samples[0].startswith("the of")


def test_the_benchmarks_eager_baseline_draws_what_the_compiled_sampler_draws():
    model = checkpoints.build_model(ModelConfig(vocab_size=40, cutoffs=(10,), **TINY_MODEL))
    prompt = [5, 9, 2, 7]
    eager = generate.eager_sample_ids(model, prompt, 12, temperature=1.0, top_k=0, top_p=1.0, seed=3)
    assert sampler.sample_ids(model, tf.ragged.constant([prompt]), 12, 1.0, seed=3).to_list() == [prompt + eager]


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


@pytest.mark.parametrize("name, damage", [(TOKENIZER_FILE, "missing"), (TOKENIZER_FILE, "truncated"),
                                          (METADATA_FILE, "truncated")])
def test_a_missing_or_damaged_data_file_is_named_in_one_line(trained_run, tmp_path, name, damage):
    data_dir = shutil.copytree(trained_run.read_config()["data_dir"], tmp_path / "data")
    run_dir = shutil.copytree(trained_run.directory, tmp_path / "run")
    (run_dir / "config.json").write_text(trained_run.config_path.read_text().replace(
        trained_run.read_config()["data_dir"], str(data_dir)))
    if damage == "missing":
        (data_dir / name).unlink()
    else:
        (data_dir / name).write_bytes((data_dir / name).read_bytes()[:100])
    assert str(data_dir / name) in error_line(run_script("generate.py", run_dir), "generate.py")


@pytest.mark.parametrize("flag, message", [("--top_p=0", "--top_p=0.0: must be in (0, 1]"),
                                           ("--top_p=1.5", "--top_p=1.5: must be in (0, 1]"),
                                           ("--length=-1", "--length=-1: must be 0 or more"),
                                           ("--temperature=-0.5", "--temperature=-0.5: must be 0 (greedy) or more"),
                                           ("--intra_op_threads=-1",
                                            "--intra_op_threads=-1: must be 0 (TensorFlow's choice) or more")])
def test_a_bad_flag_is_refused_in_one_line_naming_it(flag, message):
    assert error_line(run_script("generate.py", "logs/base/export", flag), "generate.py") == \
        f"generate.py: error: {message}" + ("; --top_k=1 decodes greedily." if "top_p" in flag else ".")


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
    assert tokenizer.decode(tf.ragged.constant([ids, ids[4:7]])).numpy().tolist() == [b"the cat\n\n", b"cat"]
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
