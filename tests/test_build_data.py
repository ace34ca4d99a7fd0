"""build_data.py: bad input, download from a local server, custom corpora, and the real WikiText-2 build."""
import http.server
import inspect
import io
import json
import os
import re
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest

import build_data
import data_utils
from conftest import REPO_ROOT, SHARED_WIKITEXT2, write_corpus

def run_build(*args):
    return subprocess.run([sys.executable, str(REPO_ROOT / "build_data.py"), *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)


def assert_fails_cleanly(result, output_dir, *fragments):
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("build_data.py: error:")]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0]
    assert not output_dir.exists()
    assert not list(output_dir.parent.glob(f".{output_dir.name}-building-*"))


SMALL = ["--vocab_size=40", "--batch_size=4", "--seq_len=8"]
SMALL_SETTINGS = dict(vocab_size=40, batch_size=4, seq_len=8)

# The default dataset, written out here rather than read from data_utils (the README: 12k vocabulary, 32 x 32).
README_DEFAULTS = dict(vocab_size=12000, lowercase=True, model_type="unigram", batch_size=32, seq_len=32, shards=1)


def test_flags_and_build_dataset_default_to_the_documented_dataset():
    keywords = inspect.signature(build_data.build_dataset).parameters
    for name, value in README_DEFAULTS.items():
        assert build_data.FLAGS[name].default == value, name
        assert keywords[name].default == value, name
    assert build_data.FLAGS["output_dir"].default == "data/tfrecords"


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
    assert refused.returncode != 0 and "--overwrite" in refused.stderr
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
    unigram = np.loadtxt(tmp_path / "records" / data_utils.UNIGRAM_FILE)
    assert len(unigram) == 40 and abs(unigram.sum() - 1) < 1e-6


def test_single_file_corpus_is_cut_into_contiguous_splits():
    lines = [f"line {i}" for i in range(100)]
    splits = data_utils.cut_splits(lines, "one.txt")
    assert splits["train"] + splits["valid"] + splits["test"] == lines
    assert (len(splits["valid"]), len(splits["test"])) == (5, 5)


def single_file_corpus(tmp_path, extra=b""):
    path = tmp_path / "one.txt"
    path.write_bytes((write_corpus(tmp_path / "corpus") / "train.txt").read_bytes() + extra)
    return path


def test_single_file_corpus_with_invalid_bytes_warns(tmp_path, caplog):
    path = single_file_corpus(tmp_path, b" broken \xff bytes \n")
    lines, sha256s = build_data.read_splits(data_utils.find_split_files(path))
    assert "one.txt: replaced 1 invalid UTF-8" in caplog.text
    assert sum(len(split_lines) for split_lines in lines.values()) == 301
    assert sha256s == dict.fromkeys(data_utils.SPLITS, data_utils.sha256_of(path))


def test_edited_single_file_corpus_is_not_up_to_date(tmp_path):
    path = single_file_corpus(tmp_path)
    output = tmp_path / "records"
    build_data.build_dataset(output, data_utils.find_split_files(path), **SMALL_SETTINGS)
    with open(path, "a") as f:
        f.write(" one more line \n")
    with pytest.raises(data_utils.DataError, match="built with other settings"):
        build_data.build_dataset(output, data_utils.find_split_files(path), **SMALL_SETTINGS)
    rebuilt = build_data.build_dataset(output, data_utils.find_split_files(path), **SMALL_SETTINGS, overwrite=True)
    assert rebuilt["settings"]["source_sha256"]["train"] == data_utils.sha256_of(path)


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
    assert result.returncode != 0 and "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("build_data.py: error:")]
    assert error_lines == [f"build_data.py: error: {tmp_path / 'file'}: File exists"], result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_fails_with_one_line(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o555)
    output = read_only / "records"
    result = run_build(f"--input_text={corpus}", f"--output_dir={output}", *SMALL)
    assert_fails_cleanly(result, output, str(read_only), "Permission denied")
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# Download, against a server on 127.0.0.1.


def zipped_corpus(folder_name, texts):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in texts.items():
            archive.writestr(f"{folder_name}/{name}", text)
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
    folder = data_utils.locate_corpus(corpus, tmp_path, log=lambda message: None)
    assert (folder / "wiki.test.tokens").read_text() == TEXTS["wiki.test.tokens"]
    assert server["user_agents"] == [data_utils.BROWSER_USER_AGENT]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wt2"]  # The zip is gone once extracted.
    # A second call finds the extracted copy and downloads nothing.
    assert data_utils.locate_corpus(corpus, tmp_path, log=lambda message: None) == folder
    assert len(server["user_agents"]) == 1


@pytest.mark.parametrize("archive", [
    zipped_corpus("wt2", {**TEXTS, "wiki.train.tokens": " \n a b \n"}),  # A truncated split: wrong counts.
    zipped_corpus("wt2", TEXTS)[:-30],  # A truncated zip.
    zipped_corpus("other", TEXTS),  # The wrong archive.
])
def test_corrupted_download_is_rejected_and_deleted(server, tmp_path, archive):
    server["files"]["/wt2.zip"] = archive
    corpus = data_utils.Corpus(url=server["url"] + "/wt2.zip", folder="wt2", files=FILES, expected_counts=COUNTS)
    with pytest.raises(data_utils.DataError, match="Rejected download"):
        data_utils.locate_corpus(corpus, tmp_path, log=lambda message: None)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_mirror_retries_then_says_how_to_supply_a_copy(server, tmp_path, monkeypatch):
    monkeypatch.setattr(data_utils.time, "sleep", lambda seconds: None)
    with pytest.raises(data_utils.DataError, match="after 3 attempts.*--wikitext_dir.*WIKITEXT2_DIR"):
        data_utils.download(server["url"] + "/missing.zip", tmp_path / "x.zip")
    assert len(server["user_agents"]) == 3
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# The real thing.

# From ../shared/data/README.md: the published files' SHA-256.
WIKITEXT2_SHA256 = {
    "train": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
    "valid": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    "test": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
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
