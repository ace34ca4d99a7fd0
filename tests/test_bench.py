"""bench.py: its synthetic stream, its data defaults, its provenance, and one tiny end-to-end run of the report."""
import datetime
import importlib.metadata
import json
import re
import subprocess
import sys

import numpy as np
import pytest

import bench
import devices
from conftest import REPO_ROOT


def test_zipf_stream_ranks_frequent_ids_first():
    zipf = bench.zipf_stream(20000, 100)
    assert zipf.min() >= 1 and zipf.max() < 100 and np.mean(zipf == 1) > np.mean(zipf == 2) > np.mean(zipf == 50)


def test_data_flags_default_to_the_default_dataset():
    """The README's side-by-side configuration: batch 32 x 32 and a 12k vocabulary, as build_data.py builds."""
    result = subprocess.run([sys.executable, "bench.py", "--helpshort"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)  # absl's help exits with status 1.
    defaults = dict(re.findall(r"--(\w+):.*\n\s+\(default: '([^']*)'\)", result.stdout))
    assert "vocab_size" in defaults, result.stderr[-3000:]
    assert (defaults["vocab_size"], defaults["batch_size"], defaults["seq_len"]) == ("12000", "32", "32")


def test_git_commit_names_head_and_whether_tracked_files_changed(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout.strip()

    assert bench.git_commit(tmp_path) == (None, None)  # Not a checkout.
    git("init", "-q")
    (tmp_path / "model.py").write_text("x = 1\n")
    git("add", "model.py")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    (tmp_path / "bench.json").write_text("{}")  # Untracked output is not a change to the code.
    assert bench.git_commit(tmp_path) == (head, False)
    (tmp_path / "model.py").write_text("x = 2\n")
    assert bench.git_commit(tmp_path) == (head, True)


@pytest.mark.slow
def test_tiny_benchmark_writes_a_complete_report(tmp_path):
    output = tmp_path / "bench.json"
    command = [sys.executable, "bench.py", "--vocab_size=64", "--cutoffs=8,24", "--d_model=16", "--num_heads=2",
               "--d_ffn=32", "--num_layers=2", "--mem_len=4", "--batch_size=4", "--seq_len=8", "--steps=3",
               "--warmup_steps_bench=1", "--architectures=supernet,AD", f"--output={output}"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    origin = report["provenance"]
    assert (origin["commit"], origin["dirty"]) == bench.git_commit(REPO_ROOT)
    age = datetime.datetime.now(datetime.timezone.utc) - datetime.datetime.fromisoformat(origin["date_utc"])
    assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=10)
    assert origin["cpu"] == devices.cpu_model() and origin["cpu_bfloat16_features"] == devices.cpu_bfloat16_features()
    assert origin["tensorflow"] == importlib.metadata.version("tensorflow")
    assert origin["precision"]["timed"] == ["float32", "bfloat16"]
    assert origin["precision"]["chosen_by"] == "--precisions=float32,bfloat16"
    assert origin["precision"]["train_default_reason"].startswith("auto: ")
    results = {(r["architecture"], r["precision"]): r for r in report["results"]}
    assert set(results) == {(a, p) for a in ("supernet", "AD") for p in ("float32", "bfloat16")}
    assert set(report["matmul_peak_flops"]) == {"float32", "bfloat16"}
    assert report["data_tokens_per_second"] > 0 and len(report["tail_shares"]) == 2
    for figures in results.values():
        assert figures["train_ms_per_step"] > 0 and figures["eval_ms_per_step"] > 0 and figures["train_mfu"] > 0
    # The SuperNet runs both candidates of each block, so it costs more FLOPs than the fixed "AD".
    assert results["supernet", "float32"]["train_flops_per_step"] > results["AD", "float32"]["train_flops_per_step"]
    table = [line.split() for line in result.stdout.splitlines()]
    assert ["supernet", "bfloat16"] in [line[:2] for line in table] and ["AD", "float32"] in [line[:2] for line in table]
