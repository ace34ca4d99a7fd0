"""compare_original.py without the original or the network: its sources, its record and its argument errors."""
import subprocess

import pytest

import compare_original
from conftest import error_line, run_script


def fake_original(folder):
    """A git checkout with the original's two file names, committed."""
    folder.mkdir()
    for name in compare_original.ORIGINAL_FILES:
        (folder / name).write_text(f"# {name}\n")

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "original")
    return git("rev-parse", "HEAD")


@pytest.mark.parametrize("where", ["checkout", "git directory"])
def test_the_original_sources_come_from_a_checkout_or_its_git_directory(tmp_path, where):
    commit = fake_original(tmp_path / "original")
    (tmp_path / "work").mkdir()
    path = tmp_path / "original" if where == "checkout" else tmp_path / "original" / ".git"
    assert compare_original.original_sources(path, tmp_path / "work") == commit
    for name in compare_original.ORIGINAL_FILES:
        assert (tmp_path / "work" / name).read_text() == f"# {name}\n"


def test_the_record_keeps_bench_provenance_and_divides_the_original_mean_by_each_precision():
    supernet = dict(train_tokens_per_second=1, train_mfu=0.4, eval_ms_per_step=30.0)
    bench_report = dict(provenance={"commit": "abc", "cpu": "Xeon"}, steps=60, matmul_peak_flops={"float32": 3e11},
                        results=[dict(architecture="supernet", precision="float32", train_ms_per_step=100.0, **supernet),
                                 dict(architecture="supernet", precision="bfloat16", train_ms_per_step=80.0, **supernet),
                                 dict(architecture="AAAAAA", precision="float32", train_ms_per_step=50.0, **supernet)])
    timings = [dict(train_ms_per_step=ms, tensorflow="2.21.0", tf_keras="2.21.0") for ms in (140.0, 144.0)]
    record = compare_original.comparison("0123abc", timings, bench_report)
    assert record["provenance"] == bench_report["provenance"]
    assert record["speed_up"] == {"float32": pytest.approx(1.42), "bfloat16": pytest.approx(1.775)}
    assert [result["precision"] for result in record["project"]] == ["float32", "bfloat16"]
    assert record["original"]["commit"] == "0123abc" and record["original"]["train_ms_per_step"] == [140.0, 144.0]
    assert record["original"]["train_tokens_per_second"][0] == pytest.approx(32 * 32 / 0.140)


def test_bench_runs_the_same_configuration_as_the_original():
    flags = compare_original.bench_flags(3, "out.json")
    assert {"--architectures=supernet", "--steps=3", "--output=out.json", "--cutoffs=250,2500", "--d_ffn=1024",
            "--batch_size=32", "--seq_len=32", "--vocab_size=12000", "--mem_len=16"} <= set(flags)


@pytest.mark.parametrize("arguments, fragment", [
    ([], "expected one argument"),
    (["/nonexistent/original"], "/nonexistent/original: no such file or directory"),
    (["{tmp}"], "neither a checkout nor a git directory"),
    (["{tmp}", "--steps=0"], "--steps=0: must be at least 1"),
])
def test_argument_errors_are_one_line(tmp_path, arguments, fragment):
    arguments = [argument.format(tmp=tmp_path) for argument in arguments]
    assert fragment in error_line(run_script("compare_original.py", *arguments, timeout=60), "compare_original.py")
