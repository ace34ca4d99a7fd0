"""build_data.py: bad input, download from a local server, custom corpora, character corpora, and the real
WikiText-2 build."""
import dataclasses
import hashlib
import http.server
import inspect
import io
import json
import math
import os
import re
import subprocess
import threading
import zipfile

import numpy as np
import pytest
from absl import flags

import build_data
import data_utils
import train
from conftest import SHARED_WIKITEXT2, TINY_MODEL, build_small_character_dataset, error_line, run_script, write_corpus
from config import UNIGRAM_FILE, ModelConfig, RunOptions, TrainConfig

def run_build(*args):
    return run_script("build_data.py", *args)


def assert_fails_cleanly(result, output_dir, *fragments):
    error = error_line(result, "build_data.py")
    for fragment in fragments:
        assert fragment in error
    assert not output_dir.exists()
    assert not list(output_dir.parent.glob(f".{output_dir.name}-building-*"))


SMALL = ["--vocab_size=40", "--batch_size=4", "--seq_len=8"]
SMALL_SETTINGS = dict(vocab_size=40, batch_size=4, seq_len=8)

# The default dataset, written out here rather than read from data_utils (the README: 12k vocabulary, 32 x 32).
README_DEFAULTS = dict(lowercase=True, model_type="unigram", batch_size=32, seq_len=32, shards=1)


def test_flags_and_build_dataset_default_to_the_documented_dataset():
    flag_values = build_data.define_flags(flags.FlagValues())
    keywords = inspect.signature(build_data.build_dataset).parameters
    for name, value in README_DEFAULTS.items():
        assert flag_values[name].default == value, name
        assert keywords[name].default == value, name
    assert flag_values["output_dir"].default == "data/tfrecords"
    assert flag_values["dataset"].default == "wikitext-2"
    # The vocabulary is the dataset's (README, Data): 12k pieces for WikiText-2 and your own text, 32k for WikiText-103.
    assert flag_values["vocab_size"].default is None and keywords["vocab_size"].default is None
    assert data_utils.DEFAULT_VOCAB_SIZE == data_utils.find_corpus("wikitext-2").vocab_size == 12000
    assert data_utils.find_corpus("wikitext-103").vocab_size == 32000


@pytest.mark.slow
def test_bad_input_fails_with_one_line_and_no_output(tmp_path):
    output = tmp_path / "out" / "records"
    assert_fails_cleanly(run_build(f"--input_text={tmp_path / 'nowhere'}", f"--output_dir={output}"), output,
                         "nowhere", "no such file or directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    for split in data_utils.SPLITS:
        (empty / f"{split}.txt").write_text(" \n \n")
    assert_fails_cleanly(run_build(f"--input_text={empty}", f"--output_dir={output}", *SMALL), output,
                         "train.txt", "empty")
    corpus = write_corpus(tmp_path / "corpus")
    assert_fails_cleanly(run_build(f"--input_text={corpus}", f"--output_dir={output}", "--vocab_size=40",
                                   "--batch_size=4000", "--seq_len=32"), output, "train split", "--batch_size")
    assert_fails_cleanly(run_build(f"--input_text={corpus}", f"--output_dir={output}", "--vocab_size=100000"),
                         output, "--vocab_size 100000")


@pytest.mark.slow
def test_existing_output_with_other_settings_needs_overwrite(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    output = tmp_path / "records"
    assert run_build(f"--input_text={corpus}", f"--output_dir={output}", *SMALL).returncode == 0
    built = json.loads((output / "metadata.json").read_text())
    again = run_build(f"--input_text={corpus}", f"--output_dir={output}", *SMALL)
    assert again.returncode == 0 and "up to date" in again.stderr
    refused = run_build(f"--input_text={corpus}", f"--output_dir={output}", *SMALL[:-1], "--seq_len=9")
    assert "--overwrite" in error_line(refused, "build_data.py")
    assert json.loads((output / "metadata.json").read_text()) == built  # Untouched.
    replaced = run_build(f"--input_text={corpus}", f"--output_dir={output}", *SMALL[:-1], "--seq_len=9", "--overwrite")
    assert replaced.returncode == 0
    assert json.loads((output / "metadata.json").read_text())["seq_len"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "records"]


def test_custom_corpus_with_invalid_bytes_builds_and_warns(tmp_path, caplog):
    corpus = write_corpus(tmp_path / "corpus")
    with open(corpus / "train.txt", "ab") as f:
        f.write(b" broken \xff bytes \n")
    metadata = build_data.build_dataset(tmp_path / "records", data_utils.find_split_files(corpus), vocab_size=40,
                                        batch_size=4, seq_len=8)
    assert "replaced 1 invalid UTF-8" in caplog.text
    train = metadata["splits"]["train"]
    assert train["lines"] == 301
    # Every batch of the train split is read back in order, inputs and targets shifted by one.
    batches = list(data_utils.make_dataset(tmp_path / "records", "train").as_numpy_iterator())
    assert len(batches) == train["batches"]
    for (inputs, targets), (next_inputs, _) in zip(batches, batches[1:]):
        np.testing.assert_array_equal(targets[:, :-1], inputs[:, 1:])
        np.testing.assert_array_equal(targets[:, -1], next_inputs[:, 0])
    unigram = np.loadtxt(tmp_path / "records" / UNIGRAM_FILE)
    assert len(unigram) == 40 and abs(unigram.sum() - 1) < 1e-6


def test_single_file_corpus_is_cut_into_contiguous_splits(tmp_path):
    lines = [f"line {i}" for i in range(100)]
    (tmp_path / "one.txt").write_text("\n".join(lines))  # No final line end: the last line still counts.
    spans = data_utils.cut_splits(tmp_path / "one.txt")
    splits = {split: list(data_utils.read_lines(span)) for split, span in spans.items()}
    assert splits["train"] + splits["valid"] + splits["test"] == lines
    assert (len(splits["valid"]), len(splits["test"])) == (5, 5)


def single_file_corpus(tmp_path, extra=b""):
    path = tmp_path / "one.txt"
    path.write_bytes((write_corpus(tmp_path / "corpus") / "train.txt").read_bytes() + extra)
    return path


def test_single_file_corpus_with_invalid_bytes_warns(tmp_path, caplog):
    path = single_file_corpus(tmp_path, b" broken \xff bytes \n")
    scans = build_data.scan_splits(data_utils.find_split_files(path))
    assert "one.txt: replaced 1 invalid UTF-8" in caplog.text
    assert sum(scan["lines"] for scan in scans.values()) == 301


def test_edited_single_file_corpus_is_not_up_to_date(tmp_path):
    path = single_file_corpus(tmp_path)
    output = tmp_path / "records"
    build_data.build_dataset(output, data_utils.find_split_files(path), **SMALL_SETTINGS)
    with open(path, "a") as f:
        f.write(" one more line \n")
    with pytest.raises(data_utils.DataError, match="built with other settings"):
        build_data.build_dataset(output, data_utils.find_split_files(path), **SMALL_SETTINGS)
    rebuilt = build_data.build_dataset(output, data_utils.find_split_files(path), **SMALL_SETTINGS, overwrite=True)
    assert rebuilt["settings"]["source_sha256"] == dict.fromkeys(data_utils.SPLITS, data_utils.file_digest(path))


def periodic_corpus(folder):
    """A train split of 10 copies of 40 lines of 8 made-up words each, an empty line after each line (as
    WikiText has them); valid and test: 8 of those lines. 40 evenly spaced lines of its 800 are 4 lines ten
    times (or 40 empty ones), whose text holds no more than 54 SentencePiece pieces."""
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    block = [" " + " ".join("".join(rng.choice(letters, rng.integers(3, 8))) for _ in range(8)) + " " for _ in range(40)]
    folder.mkdir()
    (folder / "train.txt").write_text("".join(f"{line}\n \n" for _ in range(10) for line in block))
    for split, lines in (("valid", block[:8]), ("test", block[8:16])):
        (folder / f"{split}.txt").write_text("".join(f"{line}\n" for line in lines))
    return folder


def test_a_periodic_corpus_trains_the_tokenizer_on_random_non_empty_lines(tmp_path):
    spans = data_utils.find_split_files(periodic_corpus(tmp_path / "corpus"))
    metadata = build_data.build_dataset(tmp_path / "records", spans, vocab_size=100, tokenizer_sentences=40,
                                        batch_size=4, seq_len=8)
    assert metadata["vocab_size"] == 100
    assert metadata["splits"]["train"]["non_empty_lines"] == 400
    assert metadata["settings"]["tokenizer_sample"] == dict(lines=40, seed=data_utils.TOKENIZER_SAMPLE_SEED)


def test_a_vocabulary_too_big_for_the_text_names_the_flags_that_would_fix_it(tmp_path):
    spans = data_utils.find_split_files(periodic_corpus(tmp_path / "corpus"))
    with pytest.raises(data_utils.DataError) as sampled:
        build_data.build_dataset(tmp_path / "records", spans, vocab_size=1000, tokenizer_sentences=40, source_name="C")
    assert re.fullmatch(r"The train split of C: the tokenizer's sample, 40 random lines of its 400 non-empty ones, is "
                        r"too small for this vocabulary: --vocab_size 1000: SentencePiece cannot train it on this text "
                        r"\(Vocabulary size too high \(1000\)\. Please set it to a value <= \d+\.\)\. Lower "
                        r"--vocab_size or raise --tokenizer_sentences\.", str(sampled.value)), sampled.value
    with pytest.raises(data_utils.DataError) as whole:
        build_data.build_dataset(tmp_path / "records", spans, vocab_size=1000, tokenizer_sentences=400, source_name="C")
    assert re.fullmatch(r"The train split of C is too small for this vocabulary: --vocab_size 1000: SentencePiece "
                        r"cannot train it on this text \(Vocabulary size too high \(1000\)\. Please set it to a "
                        r"value <= \d+\.\)\. Lower --vocab_size\.", str(whole.value)), whole.value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


@pytest.mark.parametrize("text,split", [(" a b c \n d e \n f g \n", "train"), (" a b c \n \n f g \n", "valid")])
def test_tiny_single_file_corpus_is_too_small_or_empty_naming_the_split(tmp_path, text, split):
    path = tmp_path / "three.txt"
    path.write_text(text)
    with pytest.raises(data_utils.DataError, match=f"{split} split.*(too small|empty)") as error:
        build_data.build_dataset(tmp_path / "records", data_utils.find_split_files(path), source_name=str(path))
    assert str(path) in str(error.value)
    assert list(tmp_path.iterdir()) == [path]  # Neither the output nor its staging folder.


def test_overwrite_never_replaces_a_folder_that_is_not_a_dataset(tmp_path):
    output = tmp_path / "records"
    output.mkdir()
    (output / "notes.txt").write_text("someone's work")
    with pytest.raises(data_utils.DataError, match=f"{re.escape(str(output))} exists but is not a dataset.*--output_dir"):
        build_data.build_dataset(output, data_utils.find_split_files(write_corpus(tmp_path / "corpus")),
                                 **SMALL_SETTINGS, overwrite=True)
    assert (output / "notes.txt").read_text() == "someone's work"


def test_build_removes_what_killed_builds_left_and_nothing_else(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()  # Its pid is now free, like a killed build's.
    left = [tmp_path / f".records-building-{dead.pid}-k2j4h_8x", tmp_path / f".records-old-{dead.pid}"]
    kept = [tmp_path / f".records-building-{os.getpid()}-abcd1234", tmp_path / ".records-notes", tmp_path / "corpus"]
    for folder in left + kept[:2]:
        folder.mkdir()
        (folder / "spm.model").write_text("half-written")
    build_data.build_dataset(tmp_path / "records", data_utils.find_split_files(write_corpus(tmp_path / "corpus")),
                             **SMALL_SETTINGS)
    assert sorted(tmp_path.iterdir()) == sorted(kept + [tmp_path / "records"])


def test_os_errors_fail_with_one_line_naming_the_path(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    (tmp_path / "file").write_text("")
    output = tmp_path / "file" / "records"  # Its folder is a file.
    result = run_build(f"--input_text={corpus}", f"--output_dir={output}", *SMALL)
    assert error_line(result, "build_data.py") == f"build_data.py: error: {tmp_path / 'file'}: File exists"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_fails_with_one_line(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o555)
    output = read_only / "records"
    result = run_build(f"--input_text={corpus}", f"--output_dir={output}", *SMALL)
    assert_fails_cleanly(result, output, str(read_only), "Permission denied")



# build_data.py with data_utils.STAGE wrapped to fill the disk first: the next write meets a real full disk.
FILL_THE_DISK_BEFORE = """
import shutil
import sys

import build_data
import data_utils
from absl import app

stage, filler = sys.argv.pop(1), sys.argv.pop(1)
unwrapped = getattr(data_utils, stage)

def fill_the_disk_then(*args, **kwargs):
    with open(filler, "ab") as file:
        file.write(bytes(shutil.disk_usage(filler.rpartition("/")[0]).free))
    return unwrapped(*args, **kwargs)

setattr(data_utils, stage, fill_the_disk_then)
build_data.FLAGS = build_data.define_flags()
app.run(build_data.main)
"""


@pytest.mark.parametrize("stage", ["train_sentencepiece", "encode_lines_to_file", "write_tfrecords"])  # Its model, the
# token streams, the TFRecords.
def test_a_full_disk_at_any_stage_of_the_build_names_the_folder_in_one_line_and_leaves_nothing(small_disk, tmp_path,
                                                                                               stage):
    corpus = write_corpus(tmp_path / "corpus")
    output = small_disk / "records"
    result = run_script("-c", FILL_THE_DISK_BEFORE, stage, small_disk / "filler", f"--input_text={corpus}",
                        f"--output_dir={output}", *SMALL)
    assert re.fullmatch(rf"build_data.py: error: {re.escape(str(output))}: the disk is full \(\d+ bytes free of "
                        r"4.0 MiB\); the build left nothing behind\. Free some space and rerun the same command\.",
                        error_line(result, "build_data.py"))
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]

# ---------------------------------------------------------------------------------------------
# Download, against a server on 127.0.0.1.


def zipped_corpus(folder_name, texts):
    """The same bytes on every call: a fixed timestamp, so that parallel workers collect the same tests."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in texts.items():
            archive.writestr(zipfile.ZipInfo(f"{folder_name}/{name}", date_time=(2020, 1, 1, 0, 0, 0)), text)
    return buffer.getvalue()


@pytest.fixture
def server():
    """Serves `server.files` by path; answers 403 to Python's default User-Agent, like the real mirror."""
    state = {"files": {}, "user_agents": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            agent = self.headers.get("User-Agent", "")
            state["user_agents"].append(agent)
            body = state["files"].get(self.path)
            status = 403 if agent.startswith("Python-urllib") else 200 if body is not None else 404
            self.send_response(status)
            self.end_headers()
            if status == 200:
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


TEXTS = {"wiki.train.tokens": " \n a b c \n", "wiki.valid.tokens": " d e \n", "wiki.test.tokens": " f \n \n"}
FILES = {split: f"wiki.{split}.tokens" for split in data_utils.SPLITS}
COUNTS = {"train": (2, 5), "valid": (1, 3), "test": (2, 3)}


def test_download_sends_browser_user_agent_and_extracts(server, tmp_path):
    server["files"]["/wt2.zip"] = zipped_corpus("wt2", TEXTS)
    corpus = data_utils.Corpus(url=server["url"] + "/wt2.zip", folder="wt2", files=FILES, expected_counts=COUNTS)
    folder = data_utils.locate_corpus(corpus, tmp_path)
    assert (folder / "wiki.test.tokens").read_text() == TEXTS["wiki.test.tokens"]
    assert server["user_agents"] == [data_utils.BROWSER_USER_AGENT]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wt2"]  # The zip is gone once extracted.
    # A second call finds the extracted copy and downloads nothing.
    assert data_utils.locate_corpus(corpus, tmp_path) == folder
    assert len(server["user_agents"]) == 1


@pytest.mark.parametrize("archive", [
    zipped_corpus("wt2", {**TEXTS, "wiki.train.tokens": " \n a b \n"}),
    zipped_corpus("wt2", TEXTS)[:-30],
    zipped_corpus("other", TEXTS),
], ids=["truncated_split", "truncated_zip", "wrong_archive"])
def test_corrupted_download_is_rejected_and_deleted(server, tmp_path, archive):
    server["files"]["/wt2.zip"] = archive
    corpus = data_utils.Corpus(url=server["url"] + "/wt2.zip", folder="wt2", files=FILES, expected_counts=COUNTS)
    with pytest.raises(data_utils.DataError, match="Rejected download"):
        data_utils.locate_corpus(corpus, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_mirror_retries_then_says_in_one_line_how_to_supply_a_copy(server, tmp_path, monkeypatch):
    monkeypatch.setattr(data_utils.time, "sleep", lambda seconds: None)
    url = server["url"] + "/missing.zip"
    with pytest.raises(data_utils.DataError, match=f"{re.escape(url)} after 3 attempts.*{tmp_path}/.*--corpus_dir") as error:
        data_utils.download(url, tmp_path / "x.zip")
    assert "\n" not in str(error.value)
    assert len(server["user_agents"]) == 3
    assert list(tmp_path.iterdir()) == []


# Each published corpus as a small zip of its real layout (the real Corpus with its URL, sizes, counts and
# digest replaced), served like the real mirror.
CHARACTER_SPLIT_BYTES = {"train": 900, "valid": 50, "test": 50}


def small_archive(dataset):
    """(the dataset's Corpus scaled down, its zip's bytes); the digest keeps the published one's algorithm."""
    corpus = data_utils.find_corpus(dataset)
    rng = np.random.default_rng(0)
    if corpus.alphabet is None:
        texts = {name: " \n = Title = \n a b c \n" * (3 + i) for i, name in enumerate(corpus.files.values())}
        counts = {split: (3 * (3 + i), 9 * (3 + i)) for i, split in enumerate(data_utils.SPLITS)}
        corpus = dataclasses.replace(corpus, expected_counts=counts)
    else:
        symbols = np.frombuffer(corpus.alphabet, np.uint8)
        texts = {corpus.files["train"]: rng.choice(symbols, sum(CHARACTER_SPLIT_BYTES.values())).tobytes()}
        corpus = dataclasses.replace(corpus, split_bytes=CHARACTER_SPLIT_BYTES)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in texts.items():
            archive.writestr(f"{corpus.folder}/{name}" if corpus.zip_folder is None else name, text)
    archive = buffer.getvalue()
    algorithm = corpus.archive_digest[0]
    return dataclasses.replace(corpus, archive_bytes=len(archive),
                               archive_digest=(algorithm, hashlib.new(algorithm, archive).hexdigest())), archive


@pytest.mark.parametrize("dataset", ["wikitext-103", "enwik8", "text8"])
def test_each_corpus_downloads_checks_its_archive_and_cuts_its_splits(server, tmp_path, dataset):
    corpus, archive = small_archive(dataset)
    server["files"]["/corpus.zip"] = archive
    corpus = dataclasses.replace(corpus, url=server["url"] + "/corpus.zip")
    spans = data_utils.corpus_spans(corpus, data_utils.locate_corpus(corpus, tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [corpus.folder]  # The zip is gone once extracted.
    if corpus.alphabet is None:
        assert [data_utils.scan_lines(spans[split])["lines"] for split in data_utils.SPLITS] == [9, 12, 15]
    else:  # The first 900 bytes are train, the next 50 valid, the last 50 test.
        assert [(span.start, span.stop) for span in spans.values()] == [(0, 900), (900, 950), (950, 1000)]


@pytest.mark.parametrize("dataset", ["wikitext-103", "enwik8", "text8"])
def test_an_archive_unlike_the_published_one_is_rejected_and_deleted(server, tmp_path, dataset):
    corpus, archive = small_archive(dataset)
    corpus = dataclasses.replace(corpus, url=server["url"] + "/corpus.zip")
    server["files"]["/corpus.zip"] = archive[:-1] + bytes([archive[-1] ^ 1])  # Same size, one bit flipped.
    with pytest.raises(data_utils.DataError, match=f"Rejected download .*{corpus.archive_digest[0]} .*expected the published"):
        data_utils.locate_corpus(corpus, tmp_path)
    server["files"]["/corpus.zip"] = archive + b"\0"
    with pytest.raises(data_utils.DataError, match=f"Rejected download .*{len(archive) + 1:,} bytes, expected the published"):
        data_utils.locate_corpus(corpus, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_character_corpus_of_the_wrong_size_or_alphabet_fails_naming_the_file(tmp_path):
    corpus = dataclasses.replace(data_utils.TEXT8, split_bytes=CHARACTER_SPLIT_BYTES)
    (tmp_path / "text8").write_bytes(b"ab c" * 250 + b"d")
    with pytest.raises(data_utils.DataError, match=f"{tmp_path / 'text8'}: 1,001 bytes, expected 1,000"):
        data_utils.corpus_spans(corpus, tmp_path)
    (tmp_path / "text8").write_bytes(b"ab c" * 225 + b"ab C" * 10 + b"ab c" * 15)  # Upper case in the valid split.
    spans = data_utils.corpus_spans(corpus, tmp_path)
    with pytest.raises(data_utils.DataError, match=f"{tmp_path / 'text8'}: the valid split holds 10 bytes outside .*0x43"):
        build_data.scan_splits(spans, alphabet=corpus.alphabet)
    with pytest.raises(data_utils.DataError, match="no such file"):
        data_utils.corpus_spans(data_utils.ENWIK8, tmp_path)


def test_a_local_zip_is_used_without_downloading(server, tmp_path):
    corpus, archive = small_archive("enwik8")
    (tmp_path / "enwik8.zip").write_bytes(archive)
    corpus = dataclasses.replace(corpus, url=server["url"] + "/enwik8.zip")  # Serves nothing.
    assert data_utils.locate_corpus(corpus, tmp_path) == tmp_path / "enwik8"
    assert server["user_agents"] == []


# ---------------------------------------------------------------------------------------------
# Character corpora.


def test_character_corpus_builds_one_token_per_byte_ranked_by_frequency(tmp_path):
    corpus = dataclasses.replace(data_utils.ENWIK8, split_bytes=dict(train=6000, valid=400, test=400))
    rng = np.random.default_rng(0)
    text = rng.choice(np.frombuffer(b"aaaaaabbbc\n\xff", np.uint8), 6800).tobytes()
    (tmp_path / "enwik8").write_bytes(text)
    spans = data_utils.corpus_spans(corpus, tmp_path)
    metadata = build_data.build_dataset(tmp_path / "records", spans, alphabet=corpus.alphabet, batch_size=4,
                                        seq_len=8, source_name="enwik8")
    assert metadata["vocab_size"] == 257  # Padding, end-of-line and the other 255 bytes.
    id_of_byte = np.array(metadata["tokenizer"]["id_of_byte"])
    assert id_of_byte[ord("\n")] == data_utils.EOL_ID
    assert (id_of_byte[ord("a")], id_of_byte[ord("b")]) == (2, 3)  # The frequent first.
    rarer = sorted([ord("c"), 0xff], key=lambda byte: -text[:6000].count(bytes([byte])))
    assert [id_of_byte[byte] for byte in rarer] == [4, 5]
    assert (id_of_byte[0], id_of_byte[ord("\t")]) == (6, 15)  # Bytes absent from train follow, in byte order (no \n).
    for split, span in spans.items():
        counts = metadata["splits"][split]
        assert counts["characters"] == counts["tokens"] == span.stop - span.start
        assert counts["lines"] == text[span.start : span.stop].count(b"\n")
    # The valid split read back is its bytes, every one of them (padded batching), row after row.
    byte_of_id = np.zeros(257, np.uint8)
    byte_of_id[id_of_byte] = np.arange(256)
    files = [tmp_path / "records" / name for name in metadata["splits"]["valid"]["files"]]
    windows = np.stack(list(data_utils.read_windows(files, 4, 8).as_numpy_iterator()))  # [n, B, L + 1]
    rows = np.concatenate([windows[0, :, :1], windows[:, :, 1:].transpose(1, 0, 2).reshape(4, -1)], axis=1)
    assert bytes(byte_of_id[rows[rows != data_utils.PAD_ID]]) == text[6000:6400]
    unigram = np.loadtxt(tmp_path / "records" / "unigram.txt")
    assert np.all(np.diff(unigram[2:]) <= 0) and unigram[0] == 0
    with pytest.raises(data_utils.DataError, match="--vocab_size 100: enwik8 is a character corpus"):
        build_data.build_dataset(tmp_path / "other", spans, alphabet=corpus.alphabet, vocab_size=100, source_name="enwik8")


# ---------------------------------------------------------------------------------------------
# The real thing.

# From ../shared/data/README.md: the published files' SHA-256.
WIKITEXT2_SHA256 = {
    "train": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
    "valid": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    "test": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
}


# The default build's files at commit c932e0b, before the build streamed: it must still write them bit for bit.
WIKITEXT2_RECORDS_SHA256 = {
    "train-00000-of-00001.tfrecord": "c77891b48785e9034258711ba3a86d0aa626113b3e625bc225827c5d0592de49",
    "valid-00000-of-00001.tfrecord": "8242eae279ac9c53c47c90b37c5cec354b7248dd7859cf0dc8adb336e28385bb",
    "test-00000-of-00001.tfrecord": "e031030360c3d44286d0efcb727dab04b1136ec48693595f820841b9d79fcdf3",
    "unigram.txt": "c3fd2cecece73e2c627bcf2bb436c08131f703d09735706e2f59e88772a20b59",
}


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_WIKITEXT2.is_dir(), reason="no offline WikiText-2 copy beside the checkout")
def test_default_wikitext2_build_matches_published_counts(tmp_path):
    output = tmp_path / "tfrecords"
    result = run_build(f"--wikitext_dir={SHARED_WIKITEXT2}", f"--output_dir={output}")
    assert result.returncode == 0, result.stderr
    metadata = json.loads((output / "metadata.json").read_text())
    for split, (lines, words) in data_utils.WIKITEXT2_COUNTS.items():
        counts = metadata["splits"][split]
        assert (counts["lines"], counts["words"]) == (lines, words)
        assert metadata["settings"]["source_sha256"][split] == WIKITEXT2_SHA256[split]
    train = metadata["splits"]["train"]
    assert train["batches"] == (train["tokens"] // 32 - 1) // 32
    assert train["predicted_tokens"] == train["batches"] * 32 * 32
    for split in ("valid", "test"):  # Padded: every token is scored but the first of each of the 32 rows.
        assert metadata["splits"][split]["predicted_tokens"] == metadata["splits"][split]["tokens"] - 32
    assert metadata["vocab_size"] == 12000 and len(metadata["tokenizer"]["id_rank"]) == 12000
    unigram = np.loadtxt(output / "unigram.txt")
    assert np.all(np.diff(unigram[2:]) <= 0) and abs(unigram.sum() - 1) < 1e-6
    assert {name: data_utils.file_digest(output / name) for name in WIKITEXT2_RECORDS_SHA256} == WIKITEXT2_RECORDS_SHA256


@pytest.mark.slow
def test_a_character_dataset_trains_end_to_end_and_reports_bits_per_character(tmp_path):
    data_dir, metadata = build_small_character_dataset(tmp_path)
    assert metadata["vocab_size"] == 29  # Padding, end-of-line and the 27 symbols.
    model_config = ModelConfig(vocab_size=29, cutoffs=(), **TINY_MODEL)
    results = train.train_and_evaluate(model_config, TrainConfig(epochs=1, warmup_steps=5), data_dir,
                                       tmp_path / "run", RunOptions(log_every=10))
    for split in ("valid", "test"):
        counts = metadata["splits"][split]
        expected = results[f"{split}_loss"] * results[f"{split}_tokens"] / (math.log(2) * counts["characters"])
        assert results[f"{split}_bits_per_character"] == pytest.approx(expected, rel=1e-9)
        assert f"{split}_word_perplexity" not in results
    assert 0 < results["valid_bits_per_character"] < math.log2(29)  # It learned something of the 6 words.
    assert json.loads((tmp_path / "run" / "results.json").read_text())["test_bits_per_character"] == pytest.approx(
        results["test_bits_per_character"])
