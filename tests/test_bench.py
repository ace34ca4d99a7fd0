"""bench.py: its synthetic stream, its data defaults, its provenance, its search modes, cost table and eval
memory, batches in chunks, and tiny end-to-end runs of the report."""
import datetime
import importlib.metadata
import json
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import bench
import checkpoints
import devices
from config import ModelConfig, TrainConfig
from conftest import REPO_ROOT, TINY_MODEL, error_line
from costs import flops_per_token
from model import Memory


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


def test_step_memory_is_the_peak_a_call_adds_to_the_memory_in_use():
    held = tf.ones([256, 1024])  # 1 MiB in use before and after the call, not counted.

    def run():  # Two 4 MiB tensors at once.
        doubled = tf.ones([1024, 1024]) * 2.0
        return float(tf.reduce_sum(doubled))

    assert bench.step_memory_mib(run) == pytest.approx(8.0, abs=0.1) and held.shape == (256, 1024)


def test_a_batch_chunk_that_does_not_divide_the_batch_is_refused_in_one_line():
    result = subprocess.run([sys.executable, "bench.py", "--batch_size=4", "--batch_chunk=3"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert "--batch_chunk=3 does not divide the 4 rows" in error_line(result, "bench.py")


@pytest.mark.slow
def test_tiny_benchmark_writes_a_complete_report(tmp_path):
    output = tmp_path / "bench.json"
    command = [sys.executable, "bench.py", "--vocab_size=64", "--cutoffs=8,24", "--d_model=16", "--num_heads=2",
               "--d_ffn=32", "--num_layers=2", "--mem_len=4", "--batch_size=4", "--seq_len=8", "--steps=3",
               "--warmup_steps_bench=1", "--architectures=supernet,AD", "--batch_chunk=2", f"--output={output}"]
    checkout_before = bench.git_commit(REPO_ROOT)
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    origin = report["provenance"]
    # The checkout's state while the bench ran: before it or after it, should a commit or an edit land meanwhile.
    assert (origin["commit"], origin["dirty"]) in (checkout_before, bench.git_commit(REPO_ROOT))
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
        assert 0 <= figures["train_step_memory_mib"] < report["peak_host_memory_mib"]  # A tiny step's, within what it frees.
    assert report["batch_chunk"] == 2 and "batch 4 x seq_len 8 in 2 chunk(s)" in result.stdout
    # The SuperNet runs both candidates of each block, so it costs more FLOPs than the fixed "AD".
    assert results["supernet", "float32"]["train_flops_per_step"] > results["AD", "float32"]["train_flops_per_step"]
    table = [line.split() for line in result.stdout.splitlines()]
    assert ["supernet", "bfloat16"] in [line[:2] for line in table] and ["AD", "float32"] in [line[:2] for line in table]


def test_search_modes_are_supernets_with_their_options_and_other_names_fixed_architectures():
    model_config = ModelConfig(vocab_size=64, cutoffs=(8,), single_path=True, **TINY_MODEL)
    configs = bench.run_configs(["supernet", "single_path", "heldout", "single_path_heldout", "ADI"], model_config,
                                TrainConfig(arch_holdout=0.0))
    options = {name: (config.architecture, config.single_path, train_config.arch_holdout)
               for name, (config, train_config) in configs.items()}
    assert options == {"supernet": (None, False, 0.0), "single_path": (None, True, 0.0), "heldout": (None, False, 0.2),
                       "single_path_heldout": (None, True, 0.2), "ADI": ("ADI", True, 0.0)}
    configs = bench.run_configs(["heldout"], model_config, TrainConfig(arch_holdout=0.25))  # --arch_holdout's value.
    assert configs["heldout"][1].arch_holdout == 0.25
    assert [bench.weight_steps_per_heldout_step(f) for f in (0.2, 0.25, 0.1)] == [4, 3, 9]
    with pytest.raises(ValueError, match="'singlepath' is neither a search mode .* nor a fixed architecture"):
        bench.run_configs(["singlepath"], model_config, TrainConfig())


def test_par_names_are_the_par_ratio_architectures_at_the_depth_named_by_their_strings():
    model_config = ModelConfig(vocab_size=64, cutoffs=(8,), **dict(TINY_MODEL, num_layers=12))
    configs = bench.run_configs(["par4", "par6", "ADADADADADAD"], model_config, TrainConfig())
    assert {name: config.architecture for name, (config, _) in configs.items()} == {
        "ADADDADDDDDD": "ADADDADDDDDD", "ADDDADDDDDDD": "ADDDADDDDDDD", "ADADADADADAD": "ADADADADADAD"}


def result(architecture, train_ms, eval_ms, precision="float32"):
    return dict(architecture=architecture, precision=precision, train_ms_per_step=train_ms, eval_ms_per_step=eval_ms)


def test_the_cost_table_is_each_uniform_architectures_excess_over_identity_per_block():
    results = [result("supernet", 90.0, 30.0), result("AA", 30.0, 7.0), result("DD", 20.0, 12.0),
               result("II", 10.0, 8.0), result("AA", 1.0, 1.0, "bfloat16")]  # bfloat16 lacks DD and II: no table.
    table = bench.cost_tables(results, num_layers=2, eval_mem_len=64)
    assert list(table) == ["float32"]
    assert table["float32"]["train"] == [10.0, 5.0, 0.0] and table["float32"]["eval_mem_len"] == 64
    assert table["float32"]["eval"] == [0.0, 2.0, 0.0]  # AA's eval measured below II's: clamped at 0,
    assert table["float32"]["clamped"] == ["eval A: -0.5 ms"]  # and named.
    assert bench.cost_tables(results, num_layers=3, eval_mem_len=64) == {}  # No AAA, DDD, III.
    ratios = bench.search_ratios(results)
    assert ratios == [dict(mode="supernet", precision="float32", train_step_over={"AA": 3.0, "DD": 4.5, "II": 9.0})]


def test_a_longer_eval_memory_evaluates_a_copy_of_the_model_with_its_weights():
    keras.utils.set_random_seed(0)
    model = checkpoints.build_model(ModelConfig(vocab_size=64, cutoffs=(8,), architecture="AAA", **TINY_MODEL))
    model.set_weights([3 * w for w in model.get_weights()])  # Large enough for the context to move the loss.
    tokens = tf.constant(np.random.default_rng(0).integers(1, 64, size=(2, 8)), tf.int32)
    same_run, same_model = bench.evaluation_run(model, iter([(tokens, tokens)] * 2), 2, 4, "float32", False)
    long_run, long_model = bench.evaluation_run(model, iter([(tokens, tokens)] * 2), 2, 40, "float32", False)
    assert same_model is model and long_model is not model and long_model.config.mem_len == 40
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), long_model.get_weights()))
    memory, reference = Memory(tf.zeros([3, 2, 40, 16]), tf.constant(0)), []  # The model itself, 40 positions.
    for _ in range(2):
        nll, memory = model.token_nll(tokens, tokens, memory)
        reference.append(float(tf.reduce_sum(tf.cast(nll, tf.float64))))
    first, second = long_run(), long_run()
    assert first == pytest.approx(reference[0], rel=1e-6) and first == pytest.approx(same_run(), rel=1e-6)  # Empty.
    assert second == pytest.approx(reference[1], rel=1e-6)
    assert second != pytest.approx(same_run(), rel=1e-5)  # 8 positions of memory, not 4.


@pytest.mark.slow
def test_tiny_benchmark_times_the_search_modes_beside_fixed_architectures_and_derives_the_cost_table(tmp_path):
    output, model = tmp_path / "bench.json", dict(vocab_size=64, cutoffs=(8, 24), d_model=16, num_heads=2, d_ffn=32,
                                                   num_layers=2)
    command = [sys.executable, "bench.py", "--vocab_size=64", "--cutoffs=8,24", "--d_model=16", "--num_heads=2",
               "--d_ffn=32", "--num_layers=2", "--mem_len=4", "--eval_mem_len=24", "--batch_size=4", "--seq_len=8",
               "--steps=1", "--warmup_steps_bench=1", "--precision=float32",
               "--architectures=supernet,single_path,heldout,AA,DD,II", f"--output={output}"]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(output.read_text())
    results = {r["architecture"]: r for r in report["results"]}
    assert list(results) == ["supernet", "single_path", "heldout", "AA", "DD", "II"]
    assert (report["mem_len"], report["eval_mem_len"]) == (4, 24)
    for name, figures in results.items():
        assert figures["train_ms_per_step"] > 0 and figures["eval_ms_per_step"] > 0 and figures["eval_mfu"] > 0
        # The eval step is counted, and built, at the eval memory's 24 positions, not the training's 4.
        eval_config = ModelConfig(**model, mem_len=24, architecture=None if name in bench.SEARCH_MODE_NAMES else name)
        assert figures["eval_flops_per_step"] == pytest.approx(
            flops_per_token(eval_config, 8, tail_shares=report["tail_shares"]) * 32)
    assert results["single_path"]["train_mfu"] is None and results["supernet"]["train_mfu"] > 0
    assert (results["heldout"]["arch_holdout"], results["heldout"]["weight_steps_per_heldout_step"]) == (0.2, 4)
    table = report["cost_tables"]["float32"]
    for kind in ("train", "eval"):
        identity = results["II"][f"{kind}_ms_per_step"]
        expected = [max(0.0, (results[name][f"{kind}_ms_per_step"] - identity) / 2) for name in ("AA", "DD")]
        assert table[kind] == pytest.approx(expected + [0.0]) and table[kind][2] == 0.0
    assert f"--cost_table={','.join(f'{cost:.4g}' for cost in table['train'])}" in completed.stdout
    assert "inference cost table (eval memory 24): --cost_table=" in completed.stdout
    ratios = {ratio["mode"]: ratio["train_step_over"] for ratio in report["search_step_ratios"]}
    assert set(ratios) == {"supernet", "single_path", "heldout"} and set(ratios["heldout"]) == {"AA", "DD", "II"}
    assert ratios["single_path"]["AA"] == pytest.approx(
        results["single_path"]["train_ms_per_step"] / results["AA"]["train_ms_per_step"])
    assert re.search(r"^single_path \(float32\): [\d.]+x AA's, [\d.]+x DD's, [\d.]+x II's train step$",
                     completed.stdout, re.MULTILINE)
