"""Adaptive softmax cutoffs chosen by dynamic programming from unigram probabilities.

    python optimal_cuts.py --unigram_file=data/tfrecords/unigram.txt --num_clusters=3
    35,813              <- stdout, exactly as train.py --cutoffs takes it

Ids are ranked by frequency, so each cluster is a contiguous id range: the head [0, b_1) and tail
i = [b_i, b_{i+1}) with b_K = V. Following Grave et al. (2017), a token always pays for the head
and pays for tail i only when its label lies there (probability P_i), so the expected multiply-adds
per token of K clusters are

    cost = d * g(b_1 + K - 1)  +  sum_i P_i * (d * d_i + d_i * g(b_{i+1} - b_i))

with d = d_model, d_i = max(1, d // proj_factor**i) the width of tail i's projection, and
g(k) = max(min_cost, k): below `min_cost` columns a matmul does not get cheaper (Grave et al.'s
GPU saturation constant; 0 counts plain multiply-adds). That is costs.softmax_multiply_adds with
each tail weighted by its probability; the widths and each part's cost come from costs.py
(tail_projection_dims, head_multiply_adds, tail_multiply_adds). The dynamic program

    F_0(b) = d * g(b + K - 1),   F_i(b) = min_{a < b} F_{i-1}(a) + (S_b - S_a) * (d * d_i + d_i * g(b - a))

over prefix sums S of the probabilities is exact; each F_i(b) is one vectorised minimum over a.
"""
import quiet_tensorflow  # noqa: F401  (first: keeps TensorFlow's start-up lines off the console)

import pathlib
import sys
import time

import numpy as np
from absl import app, flags

from config import DEFAULT_DATA_DIR, UNIGRAM_FILE, ModelConfig, define_verbose_flag
from costs import head_multiply_adds, softmax_multiply_adds, tail_multiply_adds, tail_projection_dims, tail_shares


def expected_cost(probs, cutoffs, d_model, proj_factor, min_cost=0):
    """The cost model above, evaluated directly for given cutoffs (no cutoffs: a full softmax)."""
    return softmax_multiply_adds(d_model, len(probs), cutoffs, proj_factor, tail_shares=tail_shares(probs, cutoffs),
                                 min_cost=min_cost)


def optimal_cutoffs(probs, num_clusters, d_model, proj_factor, min_cost=0):
    """The cutoffs (without the vocab size) of `num_clusters` clusters, head included, of least expected cost."""
    probs = np.asarray(probs, np.float64)
    vocab_size = len(probs)
    if not 1 <= num_clusters <= vocab_size:
        raise ValueError(f"--num_clusters {num_clusters} must be between 1 and the vocab size {vocab_size}.")
    prefix = np.concatenate([[0.0], np.cumsum(probs)])  # prefix[b] = P(id < b)
    ends = np.arange(vocab_size + 1)
    cost = head_multiply_adds(d_model, ends + num_clusters - 1, min_cost).astype(np.float64)  # F_0(b): head ends at b.
    cost[0] = np.inf  # Every cluster holds at least one id.
    choices = []
    for i, width in enumerate(tail_projection_dims(d_model, num_clusters - 1, proj_factor), start=1):
        targets = [vocab_size] if i == num_clusters - 1 else range(vocab_size + 1)  # The last tail ends at V.
        next_cost = np.full(vocab_size + 1, np.inf)
        best_start = np.zeros(vocab_size + 1, np.int64)
        for b in targets:
            starts = ends[:b]  # Tail i = [a, b) for every a < b.
            candidates = cost[:b] + (prefix[b] - prefix[:b]) * tail_multiply_adds(d_model, width, b - starts, min_cost)
            if len(candidates):
                best_start[b] = int(np.argmin(candidates))
                next_cost[b] = candidates[best_start[b]]
        cost = next_cost
        choices.append(best_start)
    cutoffs, end = [], vocab_size
    for best_start in reversed(choices):
        end = int(best_start[end])
        cutoffs.append(end)
    return sorted(cutoffs)


def read_unigram(path):
    """One probability per line, in id order; they must be finite, non-negative and sum to 1."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"--unigram_file {path}: no such file; ./create_tfrecords.sh writes unigram.txt.")
    try:
        probs = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except ValueError as error:
        raise ValueError(f"--unigram_file {path}: expected one probability per line ({error})") from error
    if probs.size == 0 or not np.all(np.isfinite(probs)) or np.any(probs < 0) or abs(probs.sum() - 1.0) > 1e-3:
        raise ValueError(f"--unigram_file {path}: expected finite, non-negative probabilities summing to 1, "
                         f"got {probs.size} values summing to {probs.sum():.6g} (min {probs.min(initial=0):.3g}).")
    return probs


def define_flags(flag_values=None):
    """The flags, on absl's FLAGS or on `flag_values` (the tests' own)."""
    values = dict(flag_values=flags.FLAGS if flag_values is None else flag_values)
    flags.DEFINE_string("unigram_file", str(pathlib.Path(DEFAULT_DATA_DIR) / UNIGRAM_FILE),
                        "Unigram probabilities in id order.", **values)
    flags.DEFINE_integer("num_clusters", 3, "Clusters including the head; 3 = head + 2 tails = 2 cutoffs.", **values)
    flags.DEFINE_integer("d_model", ModelConfig.d_model, "Width of the hidden state fed to the softmax.", lower_bound=1,
                         **values)
    flags.DEFINE_integer("proj_factor", ModelConfig.proj_factor, "Tail i projects to d_model // proj_factor**i.",
                         lower_bound=1, **values)
    flags.DEFINE_integer("min_cost", 0, "Columns below which a matmul gets no cheaper (0: count multiply-adds).",
                         lower_bound=0, **values)
    return define_verbose_flag(values["flag_values"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        probs = read_unigram(FLAGS.unigram_file)
        start = time.perf_counter()
        cutoffs = optimal_cutoffs(probs, FLAGS.num_clusters, FLAGS.d_model, FLAGS.proj_factor, FLAGS.min_cost)
    except ValueError as error:
        sys.exit(f"optimal_cuts.py: error: {error}")
    seconds = time.perf_counter() - start
    cost = expected_cost(probs, cutoffs, FLAGS.d_model, FLAGS.proj_factor, FLAGS.min_cost)
    full = expected_cost(probs, [], FLAGS.d_model, FLAGS.proj_factor, FLAGS.min_cost)
    print(",".join(map(str, cutoffs)))
    print(f"expected cost {cost:,.0f} multiply-adds per token, {cost / full:.1%} of a full softmax "
          f"({len(probs)} ids, {FLAGS.num_clusters} clusters, solved in {seconds:.2f} s)", file=sys.stderr)


if __name__ == "__main__":
    FLAGS = define_flags()
    app.run(main)
