"""savings.py: each network's savings against the interleaved of its own report, per bench run and over runs."""
import subprocess
import sys

import pytest

import savings
from conftest import REPO_ROOT, error_line
from test_pareto import bench_report


def two_runs(tmp_path):
    """Run 1 is two reports (the machine twice as fast for the second), run 2 one report with a 12-block depth too."""
    first = bench_report(tmp_path / "first.json", {"ADADAD": (64.0, 32.0), "ADADDD": (48.0, 8.0)})
    later = bench_report(tmp_path / "later.json", {"ADADAD": (32.0, 16.0), "DDAADD": (24.0, 8.0)})
    second = bench_report(tmp_path / "second.json", {"ADADAD": (32.0, 16.0), "ADADDD": (16.0, 12.0),
                                                      "ADDDDD": (28.0, 4.0), "ADADADADADAD": (100.0, 50.0),
                                                      "ADADDADDDDDD": (90.0, 25.0)})
    return [[first, later], [second]]


def test_savings_are_against_the_interleaved_of_the_same_report_at_hand_computed_values(tmp_path):
    runs = two_runs(tmp_path)
    # ADADDD: 1 - 48 / 64, 1 - 8 / 32 in run 1; 1 - 16 / 32, 1 - 12 / 16 in run 2. DDAADD: 1 - 24 / 32, 1 - 8 / 16.
    assert savings.savings_by_depth(runs) == {
        6: {"ADADDD": [pytest.approx((0.25, 0.75)), pytest.approx((0.5, 0.25))],
            "DDAADD": [pytest.approx((0.25, 0.5)), None],
            "ADDDDD": [None, pytest.approx((0.125, 0.75))]},
        12: {"ADADDADDDDDD": [None, pytest.approx((0.1, 0.5))]}}


def test_the_table_gives_each_run_the_mean_and_std_over_runs_and_the_runs_that_meet_the_goal(tmp_path):
    table = savings.savings_by_depth(two_runs(tmp_path))
    lines = savings.markdown(6, table[6], range(1, 3)).splitlines()
    assert lines[0] == ("| 6-block network | run 1 | run 2 | training, mean ± std | inference, mean ± std "
                        "| both ≥ 20% |")
    # Sample standard deviations over two runs: |0.5 - 0.25| / sqrt(2) = 17.7%, |0.25 - 0.75| / sqrt(2) = 35.4%.
    assert lines[2] == ("| par_ratio=4: `ADADDD` | 25.0%, 75.0% | 50.0%, 25.0% | 37.5 ± 17.7% | 50.0 ± 35.4% "
                        "| 2 of 2 |")
    assert lines[3] == "| `DDAADD` | 25.0%, 50.0% |  | 25.0% | 50.0% | 1 of 1 |"
    assert lines[4] == "| par_ratio=5, 6, 8: `ADDDDD` |  | 12.5%, 75.0% | 12.5% | 75.0% | 0 of 1 |"


def test_a_bench_run_whose_reports_both_time_a_network_is_refused(tmp_path):
    first = two_runs(tmp_path)[0][0]
    with pytest.raises(ValueError, match=f"{first} and {first} both time ADADDD: one bench run gives each network"):
        savings.run_savings([first, first])


def test_the_script_prints_a_table_per_depth_and_names_each_runs_reports(tmp_path):
    (first, later), (second,) = two_runs(tmp_path)
    command = [sys.executable, str(REPO_ROOT / "savings.py"), f"{first},{later}", second]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "| par_ratio=4: `ADADDADDDDDD` |  | 10.0%, 50.0% | 10.0% | 50.0% | 0 of 1 |" in result.stdout
    assert result.stdout.endswith(f"run 1: {first}, {later}\nrun 2: {second}\n")
    assert "name the bench.py reports" in error_line(subprocess.run(command[:2], capture_output=True, text=True),
                                                    "savings.py")
    missing = tmp_path / "missing.json"
    assert str(missing) in error_line(subprocess.run(command[:2] + [str(missing)], capture_output=True, text=True),
                                      "savings.py")
