"""optimal_cuts.py: the dynamic program equals brute force, and the CLI prints what --cutoffs takes."""
import itertools
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

import optimal_cuts
from conftest import REPO_ROOT, error_line


def brute_force_cost(probs, cutoffs, d_model, proj_factor, min_cost):
    """Grave et al.'s expected cost, written independently: the head always, tail i with its probability mass."""
    bounds = [0, *cutoffs, len(probs)]
    sizes = np.diff(bounds)
    num_tails = len(cutoffs)
    cost = d_model * max(min_cost, sizes[0] + num_tails)
    for i in range(1, num_tails + 1):
        width = max(1, d_model // proj_factor**i)
        cost += sum(probs[bounds[i] : bounds[i + 1]]) * (d_model * width + width * max(min_cost, sizes[i]))
    return cost


def zipf(vocab_size, seed):
    rng = np.random.default_rng(seed)
    weights = np.sort(rng.pareto(1.0, vocab_size) + 1e-3)[::-1] / np.arange(1, vocab_size + 1)
    return weights / weights.sum()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("num_clusters", [1, 2, 3, 4])
@pytest.mark.parametrize("d_model, proj_factor, min_cost", [(16, 2, 0), (64, 4, 0), (32, 2, 6)])
def test_dynamic_program_equals_brute_force(seed, num_clusters, d_model, proj_factor, min_cost):
    probs = zipf(8 + seed * 2, seed)
    cutoffs = optimal_cuts.optimal_cutoffs(probs, num_clusters, d_model, proj_factor, min_cost)
    best = min(brute_force_cost(probs, combo, d_model, proj_factor, min_cost)
               for combo in itertools.combinations(range(1, len(probs)), num_clusters - 1))
    assert brute_force_cost(probs, cutoffs, d_model, proj_factor, min_cost) == pytest.approx(best, rel=1e-12)
    assert len(cutoffs) == num_clusters - 1
    assert cutoffs == sorted(set(cutoffs)) and all(0 < c < len(probs) for c in cutoffs)
    assert optimal_cuts.expected_cost(probs, cutoffs, d_model, proj_factor, min_cost) == pytest.approx(
        brute_force_cost(probs, cutoffs, d_model, proj_factor, min_cost), rel=1e-12)


def test_one_cluster_is_a_full_softmax_and_too_many_is_an_error():
    assert optimal_cuts.optimal_cutoffs(zipf(10, 0), 1, 16, 4) == []
    assert optimal_cuts.optimal_cutoffs(zipf(10, 0), 10, 16, 4) == list(range(1, 10))
    with pytest.raises(ValueError, match="--num_clusters 11"):
        optimal_cuts.optimal_cutoffs(zipf(10, 0), 11, 16, 4)


def test_flags_default_to_the_default_model_and_dataset():
    """The README's default SuperNet: d_model 128, tails 4 times narrower each, cutoffs 250,2500 (3 clusters)."""
    flag_values = optimal_cuts.define_flags(flags.FlagValues())
    defaults = {name: flag_values[name].default for name in ("d_model", "proj_factor", "num_clusters")}
    assert defaults == dict(d_model=128, proj_factor=4, num_clusters=3)
    assert flag_values["unigram_file"].default == "data/tfrecords/unigram.txt"  # The default dataset's.


def run_cli(*args):
    return subprocess.run([sys.executable, "optimal_cuts.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)


def test_cli_prints_cutoffs_in_the_flag_format(tmp_path):
    probs = zipf(200, 1)
    path = tmp_path / "unigram.txt"
    np.savetxt(path, probs, fmt="%.12e")
    result = run_cli(f"--unigram_file={path}", "--num_clusters=3", "--d_model=32", "--proj_factor=2")
    assert result.returncode == 0, result.stderr
    printed = [int(x) for x in result.stdout.strip().split(",")]
    assert printed == optimal_cuts.optimal_cutoffs(probs, 3, 32, 2)
    assert "of a full softmax" in result.stderr


@pytest.mark.parametrize("content, fragment", [(None, "no such file"), ("0.5\n0.6\n", "summing to 1.1"),
                                               ("1.2\n-0.2\n", "min -0.2"), ("0.5\nnan\n", "finite"),
                                               ("0.5\nhalf\n", "one probability per line")])
def test_bad_unigram_files_fail_with_one_line(tmp_path, content, fragment):
    path = tmp_path / "unigram.txt"
    if content is not None:
        path.write_text(content)
    error = error_line(run_cli(f"--unigram_file={path}"), "optimal_cuts.py")
    assert fragment in error and str(path) in error


@pytest.mark.parametrize("num_clusters", [0, 11])
def test_cli_rejects_a_number_of_clusters_outside_the_vocabulary(tmp_path, num_clusters):
    path = tmp_path / "unigram.txt"
    np.savetxt(path, zipf(10, 0))
    result = run_cli(f"--unigram_file={path}", f"--num_clusters={num_clusters}")
    assert result.stdout == "" and error_line(result, "optimal_cuts.py") == (
        f"optimal_cuts.py: error: --num_clusters {num_clusters} must be between 1 and the vocab size 10.")
