"""pareto.py: seeds grouped by architecture, mean and sample std, costs per token, the searched marks, refusals."""
import json
import subprocess
import sys

import pytest
from PIL import Image

import pareto
from conftest import REPO_ROOT, error_line
from runs import Run

RECIPE = dict(model=dict(architecture=None, num_layers=6, d_model=128, mem_len=256),
              train=dict(seed=None, max_lr=4e-3, epochs=2), data=dict(batch_size=32, seq_len=128, source={}))


def stage2_run(directory, architecture, seed, valid, test, **train_changes):
    record = json.loads(json.dumps(RECIPE))
    record["model"]["architecture"] = architecture
    record["train"].update(seed=seed, **train_changes)
    run = Run(directory)
    run.directory.mkdir(parents=True)
    run.config_path.write_text(json.dumps(record))
    run.results_path.write_text(json.dumps(dict(valid_word_perplexity=valid, test_word_perplexity=test)))
    return str(directory)


def bench_report(path, ms_per_step):
    """A bench.py report at batch 4 x 8 = 32 tokens a step: {architecture: (train ms, eval ms)}."""
    results = [dict(architecture=a, train_ms_per_step=t, eval_ms_per_step=e) for a, (t, e) in ms_per_step.items()]
    path.write_text(json.dumps(dict(batch_size=4, seq_len=8, eval_mem_len=640, results=results)))
    return str(path)


def search_run(directory, final_pi):
    run = Run(directory)
    run.directory.mkdir(parents=True)
    run.append_pi(100, 0.5, [[1 / 3] * 3] * len(final_pi))
    run.append_pi(200, 0.1, final_pi)
    return str(directory)


def test_seeds_are_grouped_by_architecture_with_the_sample_standard_deviation(tmp_path):
    for seed, (valid, test) in enumerate([(100.0, 90.0), (102.0, 93.0), (104.0, 90.0)]):
        stage2_run(tmp_path / f"ADADAD_s{seed}", "ADADAD", seed, valid, test)
    stage2_run(tmp_path / "AADDII_s0", "AADDII", 0, 101.0, 91.0)
    groups, score = pareto.stage2_scores(pareto.run_directories([str(tmp_path / "*")]))
    assert score == "word_perplexity"
    assert groups["ADADAD"]["valid"] == [100.0, 102.0, 104.0] and groups["ADADAD"]["seed"] == [0, 1, 2]
    # Sample standard deviations: sqrt(((-2)^2 + 0 + 2^2) / 2) = 2, sqrt((1 + 4 + 1) / 2) = sqrt(3).
    assert pareto.mean_and_std(groups["ADADAD"]["valid"]) == pytest.approx((102.0, 2.0))
    assert pareto.mean_and_std(groups["ADADAD"]["test"]) == pytest.approx((91.0, 3 ** 0.5))
    assert pareto.mean_and_std([101.0]) == (101.0, None)


def test_rows_give_costs_per_token_and_savings_against_the_baseline(tmp_path):
    groups = {"ADADAD": dict(valid=[100.0, 104.0], test=[90.0, 90.0]), "AADDII": dict(valid=[101.0], test=[91.0])}
    costs, eval_mem_len = pareto.step_costs(bench_report(tmp_path / "bench.json", {"ADADAD": (64.0, 32.0),
                                                                                   "AADDII": (48.0, 8.0),
                                                                                   "DDDDDD": (1.0, 1.0)}), groups)
    assert eval_mem_len == 640
    assert costs == {"ADADAD": (2000.0, 1000.0), "AADDII": (1500.0, 250.0)}  # µs per token: ms x 1000 / 32 tokens.
    rows = pareto.table_rows(groups, costs, {"AADDII": ["search_s0", "search_s1"]}, "ADADAD")
    assert [r["architecture"] for r in rows] == ["AADDII", "ADADAD"]  # Best validation first.
    searched, baseline = rows
    assert searched["searched"] == 2 and baseline["searched"] == 0
    assert searched["valid_change"] == pytest.approx(101.0 / 102.0 - 1)
    assert searched["train_saving"] == pytest.approx(0.25) and searched["inference_saving"] == pytest.approx(0.75)
    table = pareto.markdown(rows, "word_perplexity", eval_mem_len, "ADADAD")
    assert "| `AADDII` | 2 | 1 | 101.0 | 91.0 | -1.0% | 1500.0 | 25% | 250.0 | 75% |" in table
    assert "| 1.250 ± 0.000 |" in pareto.markdown([dict(rows[0], valid=1.25, valid_std=0.0)], "bits_per_character", 640,
                                                 "ADADAD")


def test_searched_architectures_come_from_each_searchs_results_or_its_last_pi_record(tmp_path):
    search_run(tmp_path / "s0", [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    search_run(tmp_path / "s1", [[0.5, 0.4, 0.1], [0.3, 0.6, 0.1], [0.2, 0.3, 0.5]])
    search_run(tmp_path / "s2", [[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    # A finished search's own derivation, from pi after its last step, wins over its last logged record.
    search_run(tmp_path / "s3", [[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    Run(tmp_path / "s3").results_path.write_text(json.dumps(dict(derived_architecture="ADD")))
    derived = pareto.searched_architectures([str(tmp_path / "s*")])
    assert derived == {"ADI": [str(tmp_path / "s0"), str(tmp_path / "s1")], "DDI": [str(tmp_path / "s2")],
                       "ADD": [str(tmp_path / "s3")]}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty has neither a derived architecture in results.json nor a pi history"):
        pareto.searched_architectures([str(tmp_path / "empty")])


def test_runs_of_different_recipes_are_refused_naming_the_field_and_both_runs(tmp_path):
    first = stage2_run(tmp_path / "a", "ADADAD", 0, 100.0, 90.0)
    second = stage2_run(tmp_path / "b", "DADDDD", 1, 100.0, 90.0, max_lr=2e-3)
    with pytest.raises(ValueError, match=f"{second} and {first} differ in train.max_lr"):
        pareto.stage2_scores([first, second])


def test_differences_name_every_differing_field_of_nested_records_in_name_order():
    left = dict(train=dict(max_lr=4e-3, seed=0), model=dict(pre_norm=False, d_model=128))
    right = dict(train=dict(max_lr=2e-3, seed=0), model=dict(pre_norm=True, d_model=128), data_dir="elsewhere")
    assert list(pareto.differences(left, right)) == [("data_dir", None, "elsewhere"), ("model.pre_norm", False, True),
                                                     ("train.max_lr", 4e-3, 2e-3)]
    assert pareto.first_difference(left, right) == "data_dir" and pareto.first_difference(left, left) is None


def test_an_unfinished_run_and_an_untimed_architecture_are_named(tmp_path):
    run = stage2_run(tmp_path / "a", "ADADAD", 0, 100.0, 90.0)
    Run(run).results_path.unlink()
    with pytest.raises(ValueError, match=f"{Run(run).results_path} is missing"):
        pareto.stage2_scores([run])
    bench = bench_report(tmp_path / "bench.json", {"ADADAD": (1.0, 1.0)})
    with pytest.raises(ValueError, match=f"{bench} has no timing of DADDDD"):
        pareto.step_costs(bench, ["ADADAD", "DADDDD"])
    report = json.loads((tmp_path / "bench.json").read_text())
    report["results"] *= 2  # Two precisions' timings of the same architecture.
    (tmp_path / "bench.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match="times ADADAD more than once: bench one --precision"):
        pareto.step_costs(bench, ["ADADAD"])
    with pytest.raises(ValueError, match="names no run directory"):
        pareto.run_directories([str(tmp_path / "missing*")])


def test_the_chart_is_a_png_with_both_panels(tmp_path):
    rows = [dict(architecture="ADADAD", searched=0, valid=102.0, valid_std=2.0, train=2000.0, inference=1000.0),
            dict(architecture="AADDII", searched=1, valid=101.0, valid_std=None, train=1500.0, inference=250.0)]
    path = tmp_path / "pareto.png"
    path.write_bytes(pareto.draw(rows, "word_perplexity", 640, "T=128"))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1000, 420)
    train_panel, inference_panel = pareto.chart(rows, "word_perplexity", 640, "T=128").axes
    for panel, key in ((train_panel, "train"), (inference_panel, "inference")):  # Each point at its own cost.
        assert {text.get_text(): text.xy for text in panel.texts} == {r["architecture"]: (r[key], r["valid"]) for r in rows}
    assert "train step" in train_panel.get_xlabel() and "inference, memory 640" in inference_panel.get_xlabel()


def test_labels_of_near_ties_overlap_neither_each_other_nor_a_point_nor_the_axes_edge():
    # The T = 128 table's points, which the alternating labels drew on top of each other.
    points = dict(ADADAD=(189.3, 327.2, 257.9), AADDDD=(192.2, 290.9, 210.3), ADADII=(192.2, 220.8, 188.5),
                  ADADDD=(193.1, 289.8, 215.3), ADIDDD=(204.7, 226.6, 130.2), AIDDDD=(204.7, 212.9, 129.6),
                  AIDIDD=(205.9, 189.5, 122.8), ADDDDD=(206.5, 252.0, 143.7), AIIDID=(206.7, 152.1, 103.5),
                  AIIIII=(231.6, 89.7, 79.9), DIIDDD=(408.2, 158.1, 60.4))
    rows = [dict(architecture=a, searched=a not in ("ADADAD", "ADADII"), valid=v, valid_std=0.5, train=t, inference=i)
            for a, (v, t, i) in points.items()]
    figure = pareto.chart(rows, "word_perplexity", 640, "T=128", ymax=250.0)
    figure.tight_layout()  # As png_bytes lays it out again before saving.
    renderer = figure.canvas.get_renderer()
    for axes in figure.axes:
        boxes = [text.get_window_extent(renderer) for text in axes.texts]
        assert len(boxes) == len(rows)
        frame = axes.get_window_extent(renderer)
        for box in boxes:
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        for first in range(len(boxes)):
            for second in range(first + 1, len(boxes)):
                assert not boxes[first].overlaps(boxes[second]), (axes.texts[first].get_text(), axes.texts[second].get_text())
        for text, box in zip(axes.texts, boxes):
            for x, y in axes.transData.transform([other.xy for other in axes.texts if other is not text]):
                assert not box.contains(x, y), (text.get_text(), x, y)


def test_architectures_that_differ_only_in_where_identity_blocks_sit_are_one_network():
    assert pareto.same_networks(["ADIDDD", "AIDDDD", "ADDDDD", "AIIIII", "ADIDDD"]) == {"ADDDD": ["ADIDDD", "AIDDDD"]}
    assert pareto.same_networks(["ADADAD", "DADADA", "IIAIID", "AIIDII"]) == {"AD": ["AIIDII", "IIAIID"]}


def test_a_score_above_ymax_is_drawn_on_the_top_edge_with_its_score_in_the_label(tmp_path):
    inside = dict(architecture="ADADAD", searched=0, valid=102.0, valid_std=2.0, train=2000.0, inference=1000.0)
    outlier = dict(architecture="DIIDDD", searched=1, valid=408.2, valid_std=0.5, train=900.0, inference=200.0)
    assert pareto.placed(inside, None) == (102.0, "ADADAD", True)
    assert pareto.placed(inside, 250.0) == (102.0, "ADADAD", True)
    assert pareto.placed(outlier, 250.0) == (250.0, "DIIDDD (408.2, off the axis)", False)
    path = tmp_path / "pareto.png"
    path.write_bytes(pareto.draw([inside, outlier], "word_perplexity", 640, "T=128", ymax=250.0))
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_the_script_prints_the_table_writes_the_chart_and_names_a_missing_baseline(tmp_path):
    for seed in (0, 1):
        stage2_run(tmp_path / "runs" / f"ADADAD_s{seed}", "ADADAD", seed, 100.0 + seed, 90.0)
    stage2_run(tmp_path / "runs" / "AADDII_s0", "AADDII", 0, 101.0, 91.0)
    search_run(tmp_path / "search_s0", [[0.8, 0.1, 0.1]] * 2 + [[0.1, 0.8, 0.1]] * 2 + [[0.1, 0.1, 0.8]] * 2)
    bench = bench_report(tmp_path / "bench.json", {"ADADAD": (64.0, 32.0), "AADDII": (48.0, 8.0)})
    command = [sys.executable, str(REPO_ROOT / "pareto.py"), f"--bench={bench}", f"--searches={tmp_path}/search_*",
               f"--output={tmp_path}/pareto.png", f"{tmp_path}/runs/*"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| `ADADAD` | 0 | 2 | 100.5 ± 0.7 |" in result.stdout
    assert f"AADDII derived by {tmp_path}/search_s0\n" in result.stdout
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    line = error_line(subprocess.run(command[:-1] + ["--baseline=DADDDD", command[-1]], capture_output=True, text=True),
                      "pareto.py")
    assert "--baseline=DADDDD: no run of it among" in line
