"""depth.py: roles at each depth, the gap and savings against interleaved, refusals, the chart and the script."""
import json
import subprocess
import sys

import pytest
from PIL import Image

import depth
import runs
from config import ModelConfig, TrainConfig
from conftest import REPO_ROOT, error_line
from test_pareto import bench_report

RATIOS = [4.0, 5.0, 6.0, 8.0]
METADATA = dict(vocab_size=12000, batch_size=32, seq_len=128, settings=dict(source="wikitext-2/tokenized"))


def stage2_run(directory, architecture, seed, valid, pre_norm=False, max_lr=4e-3, metadata=METADATA):
    """A finished stage-2 run's record, written as train.py writes it (runs.config_record, Run.write_results)."""
    run = runs.Run(directory)
    run.directory.mkdir(parents=True)
    model_config = ModelConfig(vocab_size=12000, architecture=architecture, mem_len=256, pre_norm=pre_norm)
    config = TrainConfig(epochs=2, max_lr=max_lr, warmup_steps=200, seed=seed, precision="float32")
    run.check_or_save_config(runs.config_record(model_config, config, "data/tfrecords_T128", metadata))
    run.write_results(dict(valid_word_perplexity=valid, test_word_perplexity=valid - 10))
    return str(directory)


def test_networks_are_named_interleaved_by_their_ratios_or_by_their_string():
    assert depth.role("ADADAD", RATIOS) == "interleaved"
    assert depth.role("ADADDD", RATIOS) == "par_ratio=4"  # round(6 / 4) = 2 attention blocks in blocks 0-3: 0 and 2.
    # One attention block for 5, 6 and 8 alike: one network that answers to three ratios.
    assert depth.par_ratios("ADDDDD", RATIOS) == [5.0, 6.0, 8.0]
    assert depth.role("ADDDDD", RATIOS) == "par_ratio=5, 6, 8"
    assert depth.role("AADDDD", RATIOS) == "AADDDD"
    # 12 blocks, first two thirds = blocks 0-7: 3 attention blocks at 0, 2, 5 (ratio 4); 2 at 0, 4 for ratio 6 and
    # for 5 and 8 too (12 / 5 = 2.4 and 12 / 8 = 1.5 round to 2, half up).
    assert depth.role("ADADDADDDDDD", RATIOS) == "par_ratio=4"
    assert depth.role("ADDDADDDDDDD", RATIOS) == "par_ratio=5, 6, 8"
    assert depth.role("ADADADADADAD", RATIOS) == "interleaved"
    # At 2 blocks, ratios 2 and 4 give one attention block (at least one), in block 0: the interleaved stack itself.
    assert depth.role("AD", [2.0, 4.0]) == "interleaved = par_ratio=2, 4"
    assert depth.interleaved(7) is None and depth.role("ADADADA", RATIOS) == "ADADADA"


def test_the_gap_and_its_error_and_the_savings_against_interleaved_at_hand_computed_values(tmp_path):
    groups = {"ADADAD": dict(valid=[101.0, 99.0, 100.0], seed=[2, 0, 1]),  # Mean 100, sample std 1.
              "ADADDD": dict(valid=[100.0, 102.0, 104.0], seed=[0, 1, 2]),  # Mean 102, sample std 2.
              "ADDDDD": dict(valid=[110.0], seed=[0])}
    report = bench_report(tmp_path / "bench.json", {"ADADAD": (64.0, 32.0), "ADADDD": (48.0, 8.0),
                                                    "ADDDDD": (40.0, 16.0)})
    saved, _ = depth.depth_savings(depth.bench_by_depth([report])[6], list(groups), "ADADAD")
    interleaved, ratio4, ratio5 = depth.depth_rows(6, groups, RATIOS, saved)
    assert interleaved["valid"] == {0: 99.0, 1: 100.0, 2: 101.0}  # By seed.
    assert (interleaved["gap"], interleaved["gap_error"]) == (0.0, None)
    assert ratio4["gap"] == pytest.approx(0.02)
    # d(m / b) = (1 / b) dm - (m / b^2) db: 2 / 100 and 102 * 1 / 100^2, added in quadrature.
    assert ratio4["gap_error"] == pytest.approx((0.02 ** 2 + 0.0102 ** 2) ** 0.5)
    assert (ratio4["train_saving"], ratio4["inference_saving"]) == pytest.approx((0.25, 0.75))  # 48 / 64, 8 / 32.
    assert (ratio5["gap"], ratio5["gap_error"]) == (pytest.approx(0.10), None)  # One seed: no spread measured.
    assert (ratio5["train_saving"], ratio5["inference_saving"]) == pytest.approx((0.375, 0.5))
    table = depth.markdown([interleaved, ratio4, ratio5], "word_perplexity")
    assert "| 6 | interleaved | `ADADAD` | 3 | 100.0 ± 1.0 | s0 99.0, s1 100.0, s2 101.0 | — | — | — |" in table
    assert "| 6 | par_ratio=4 | `ADADDD` | 3 | 102.0 ± 2.0 | s0 100.0, s1 102.0, s2 104.0 | +2.0 ± 2.2% | 25% | 75% |" \
        in table
    assert "| 6 | par_ratio=5, 6, 8 | `ADDDDD` | 1 | 110.0 | s0 110.0 | +10.0% | 38% | 50% |" in table
    no_costs = depth.depth_rows(6, groups, RATIOS)
    assert all(r["train_saving"] is None and r["inference_saving"] is None for r in no_costs)


def test_a_depth_without_interleaved_and_a_seed_given_twice_are_refused():
    with pytest.raises(ValueError, match=r"12 blocks: no interleaved run \(ADADADADADAD\)"):
        depth.depth_rows(12, {"ADADDADDDDDD": dict(valid=[1.0], seed=[0])}, RATIOS)
    with pytest.raises(ValueError, match="ADADDD has seed 1 more than once"):
        depth.depth_rows(6, {"ADADAD": dict(valid=[1.0], seed=[0]), "ADADDD": dict(valid=[1.0, 1.0], seed=[1, 1])},
                         RATIOS)


def test_runs_are_grouped_by_depth_and_bench_reports_by_the_depth_they_time(tmp_path):
    shallow = stage2_run(tmp_path / "a", "ADADAD", 0, 100.0)
    deep = stage2_run(tmp_path / "b", "ADADADADADAD", 0, 90.0, pre_norm=True, max_lr=2e-3)
    by_depth, records = depth.runs_by_depth([deep, shallow])
    assert by_depth == {6: [shallow], 12: [deep]} and list(records) == [6, 12]
    six = bench_report(tmp_path / "six.json", {"ADADAD": (1.0, 1.0)})
    both = bench_report(tmp_path / "both.json", {"ADADADADADAD": (2.0, 4.0), "ADDDADDDDDDD": (1.0, 1.0),
                                                 "ADADAD": (4.0, 2.0), "ADDDDD": (3.0, 1.0)})
    # Each depth against its own interleaved: 1 - 1 / 2, 1 - 1 / 4 at 12 blocks; 1 - 3 / 4, 1 - 1 / 2 at 6.
    assert depth.bench_by_depth([six, both, six]) == {
        6: [(six, 640, {"ADADAD": (0.0, 0.0)}), (both, 640, {"ADADAD": (0.0, 0.0), "ADDDDD": (0.25, 0.5)}),
            (six, 640, {"ADADAD": (0.0, 0.0)})],
        12: [(both, 640, {"ADADADADADAD": (0.0, 0.0), "ADDDADDDDDDD": (0.5, 0.75)})]}
    other_data = stage2_run(tmp_path / "c", "ADADADADADAD", 1, 90.0, metadata=dict(METADATA, seq_len=32))
    with pytest.raises(ValueError, match=f"{other_data} and {shallow} differ in data.seq_len"):
        depth.runs_by_depth([shallow, other_data])


def six_blocks(*reports):
    """The reports as depth_savings takes them for 6 blocks (bench_by_depth's list)."""
    return depth.bench_by_depth(list(reports))[6]


def test_each_network_saves_against_the_interleaved_timed_in_its_own_report(tmp_path):
    # Two runs on different days: the machine was twice as fast on the second, which only the ratios within a run
    # survive. ADADDD: 1 - 48 / 64, 1 - 8 / 32; DDAADD: 1 - 24 / 32, 1 - 12 / 16.
    first = bench_report(tmp_path / "first.json", {"ADADAD": (64.0, 32.0), "ADADDD": (48.0, 8.0)})
    second = bench_report(tmp_path / "second.json", {"ADADAD": (32.0, 16.0), "DDAADD": (24.0, 12.0)})
    saved, eval_mem_lens = depth.depth_savings(six_blocks(first, second), ["ADADAD", "ADADDD", "DDAADD"], "ADADAD")
    assert saved == {"ADADAD": (0.0, 0.0), "ADADDD": pytest.approx((0.25, 0.75)), "DDAADD": pytest.approx((0.25, 0.25))}
    assert list(eval_mem_lens) == [first, second]
    # The second report times none of these networks: unused.
    assert depth.depth_savings(six_blocks(first, second), ["ADADAD", "ADADDD"], "ADADAD")[1] == {first: 640}
    twice = bench_report(tmp_path / "twice.json", {"ADADAD": (32.0, 16.0), "ADADDD": (20.0, 10.0)})
    with pytest.raises(ValueError, match=f"{first} and {twice} both time ADADDD: give one report per network"):
        depth.depth_savings(six_blocks(first, twice), ["ADADAD", "ADADDD"], "ADADAD")
    with pytest.raises(ValueError, match=f"{first}: no report times DADDDD; bench it beside ADADAD"):
        depth.depth_savings(six_blocks(first), ["ADADAD", "ADADDD", "DADDDD"], "ADADAD")


def test_a_report_without_its_depths_interleaved_or_timing_a_network_twice_is_refused(tmp_path):
    alone = bench_report(tmp_path / "alone.json", {"ADADDD": (48.0, 8.0)})
    with pytest.raises(ValueError, match=f"{alone} times 6-block networks without interleaved \\(ADADAD\\)"):
        depth.bench_by_depth([alone])
    odd = bench_report(tmp_path / "odd.json", {"ADDDD": (48.0, 8.0)})
    with pytest.raises(ValueError, match=r"without interleaved \(\(AD\) repeated\)"):
        depth.report_savings(odd)
    twice = tmp_path / "twice.json"  # As bench.py writes it for two --precision values.
    result = dict(architecture="ADADAD", train_ms_per_step=64.0, eval_ms_per_step=32.0)
    twice.write_text(json.dumps(dict(batch_size=4, seq_len=8, eval_mem_len=640, results=[result, result])))
    with pytest.raises(ValueError, match=f"{twice} times ADADAD more than once: bench one --precision"):
        depth.report_savings(twice)


CHART_RATIOS = [3.0, 4.0, 6.0, 8.0]


def sweep_rows(tmp_path, with_bench=True):
    """Rows of two depths for CHART_RATIOS: at 6 blocks ADADDD is ratios 3 and 4, ADDDDD ratios 6 and 8; at 12
    ADADDADDDDDD is ratio 4 and ADDDADDDDDDD ratios 6 and 8; ratio 3's 12-block network (4 attention) is not run."""
    six = {"ADADAD": dict(valid=[99.0, 101.0], seed=[0, 1]), "ADADDD": dict(valid=[102.0, 104.0], seed=[0, 1]),
           "ADDDDD": dict(valid=[109.0, 111.0], seed=[0, 1])}
    twelve = {"ADADADADADAD": dict(valid=[90.0, 90.0], seed=[0, 1]),
              "ADADDADDDDDD": dict(valid=[90.0, 91.8], seed=[0, 1]), "ADDDADDDDDDD": dict(valid=[94.5], seed=[0]),
              "AAIIDDDDDDDD": dict(valid=[89.1], seed=[0])}  # No ratio's layout: a cross of its own.
    saved = {6: {"ADADAD": (0.0, 0.0), "ADADDD": (0.1, 0.2), "ADDDDD": (0.2, 0.4)},
             12: {"ADADADADADAD": (0.0, 0.0), "ADADDADDDDDD": (0.25, 0.3), "ADDDADDDDDDD": (0.3, 0.4),
                  "AAIIDDDDDDDD": (0.35, 0.5)}}
    return (depth.depth_rows(6, six, CHART_RATIOS, saved[6] if with_bench else None)
            + depth.depth_rows(12, twelve, CHART_RATIOS, saved[12] if with_bench else None))


def test_the_chart_draws_one_line_per_ratio_through_its_networks_gaps_and_savings(tmp_path):
    figure = depth.chart(sweep_rows(tmp_path), CHART_RATIOS, "word_perplexity", "depth")
    gaps, saved = figure.axes
    lines = {container.get_label(): container for container in gaps.containers}
    assert set(lines) == {"par_ratio=3", "par_ratio=4", "par_ratio=6", "par_ratio=8",
                          "other networks (see the table)"}
    points = {label: (list(c.lines[0].get_xdata()), list(c.lines[0].get_ydata())) for label, c in lines.items()}
    assert points["par_ratio=4"] == ([6, 12], pytest.approx([3.0, 1.0]))  # 103 / 100 - 1; 90.9 / 90 - 1.
    # One network at each depth for both: 110 / 100 - 1 and 94.5 / 90 - 1.
    assert points["par_ratio=6"] == points["par_ratio=8"] == ([6, 12], pytest.approx([10.0, 5.0]))
    assert points["par_ratio=3"] == ([6], pytest.approx([3.0]))  # Not run at 12 blocks.
    assert points["other networks (see the table)"] == ([12], pytest.approx([-1.0]))  # 89.1 / 90 - 1.
    # Error bars: at 12 blocks ratio 4 has (90.9 / 90) * hypot(1.2728 / 90.9, 0 / 90); ratio 6 has one seed, no bar.
    (bars,) = lines["par_ratio=4"].lines[2]
    (low, high) = bars.get_segments()[1]
    assert high[1] - low[1] == pytest.approx(2 * 100 * (1.8 / 2 ** 0.5) / 90, rel=1e-6)
    at_6, at_12 = lines["par_ratio=6"].lines[2][0].get_segments()
    assert at_6[0][0] == at_6[1][0] == 6 and at_12.size == 0  # NaN: no bar drawn.
    band = next(patch for patch in gaps.patches if patch.get_label() == "goal: gap <= 1%")
    assert band.get_y() + band.get_height() == pytest.approx(1.0)
    assert [tick for tick in gaps.get_xticks()] == [6, 12]
    savings = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in saved.lines
               if line.get_label().startswith("par_ratio")}
    assert savings["par_ratio=4, training"] == ([6, 12], pytest.approx([10.0, 25.0]))
    assert savings["par_ratio=4, inference"] == ([6, 12], pytest.approx([20.0, 30.0]))
    assert savings["par_ratio=6, training"] == ([6, 12], pytest.approx([20.0, 30.0]))
    assert savings["par_ratio=6, inference"] == ([6, 12], pytest.approx([40.0, 40.0]))
    assert savings["par_ratio=8, inference"] == savings["par_ratio=6, inference"]
    assert savings["par_ratio=3, training"] == ([6], pytest.approx([10.0]))
    assert len(savings) == 8
    crosses = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in saved.lines
               if line.get_label().startswith("other")}
    assert crosses == {"other, training": ([12], pytest.approx([35.0])),
                       "other, inference": ([12], pytest.approx([50.0]))}
    assert figure._suptitle.get_text() == "depth" and "word perplexity" in gaps.get_ylabel()
    assert len(depth.chart(sweep_rows(tmp_path, with_bench=False), CHART_RATIOS, "word_perplexity", "").axes) == 1


def write_sweep(root):
    """Runs at 6 blocks (post-norm, lr 4e-3) and 12 blocks (pre-norm, lr 2e-3), and a bench report per depth."""
    for seed, valid in enumerate([99.0, 101.0]):
        stage2_run(root / f"d6_ADADAD_s{seed}", "ADADAD", seed, valid)
        stage2_run(root / f"d6_ADDDDD_s{seed}", "ADDDDD", seed, valid + 10)
        stage2_run(root / f"d12_ADADADADADAD_s{seed}", "ADADADADADAD", seed, valid - 10, pre_norm=True, max_lr=2e-3)
    stage2_run(root / "d12_ADADDADDDDDD_s0", "ADADDADDDDDD", 0, 90.45, pre_norm=True, max_lr=2e-3)
    six = bench_report(root / "bench6.json", {"ADADAD": (64.0, 32.0), "ADDDDD": (48.0, 16.0)})
    twelve = bench_report(root / "bench12.json", {"ADADADADADAD": (128.0, 64.0), "ADADDADDDDDD": (96.0, 44.0)})
    return six, twelve


@pytest.mark.slow
def test_the_script_prints_the_table_writes_the_chart_and_refuses_mixed_recipes_at_a_depth(tmp_path):
    six, twelve = write_sweep(tmp_path)
    command = [sys.executable, str(REPO_ROOT / "depth.py"), f"--bench={six}", f"--bench={twelve}",
               f"--output={tmp_path}/depth.png", "--title=T=128", f"{tmp_path}/d6_*", f"{tmp_path}/d12_*"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| 6 | par_ratio=5, 6, 8 | `ADDDDD` | 2 | 110.0 ± 1.4 | s0 109.0, s1 111.0 | +10.0 ± 2.1% | 25% | 50% |" \
        in result.stdout  # (110 / 100) * hypot(1.414 / 110, 1.414 / 100) = 2.1%.
    assert "| 12 | par_ratio=4 | `ADADDADDDDDD` | 1 | 90.5 | s0 90.5 | +0.5% | 25% | 31% |" in result.stdout
    assert "12 blocks: recipe differs from 6 blocks' in model.pre_norm False -> True, train.max_lr 0.004 -> 0.002." \
        in result.stdout
    assert "6 blocks: ADDDDD is the layout of par_ratio 5, 6 and 8: one network, listed once." in result.stdout
    assert f"12 blocks: savings from {twelve} (inference at memory 640)." in result.stdout
    with Image.open(tmp_path / "depth.png") as image:
        assert image.format == "PNG" and image.size == (1100, 420)
    as_list = subprocess.run(command[:2] + [f"--bench={six},{twelve}"] + command[4:], capture_output=True, text=True)
    assert as_list.returncode == 0 and as_list.stdout == result.stdout
    stage2_run(tmp_path / "d12_ADDDADDDDDDD_s0", "ADDDADDDDDDD", 0, 95.0, pre_norm=False, max_lr=2e-3)
    line = error_line(subprocess.run(command, capture_output=True, text=True), "depth.py")
    assert f"{tmp_path}/d12_ADDDADDDDDDD_s0 and {tmp_path}/d12_ADADADADADAD_s0 differ in model.pre_norm" in line
    line = error_line(subprocess.run(command[:-2] + ["--ratios=4,x", command[-2]], capture_output=True, text=True),
                      "depth.py")
    assert "--ratios=4,x: give positive numbers" in line
