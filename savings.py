"""How much one bench run's savings can be trusted (issue 35): each network's training and inference step time saved
against interleaved in every bench run that times it, and their mean ± std over those runs.

    python savings.py docs/runs/bench_L24_all_T128_eval640_83ac673.json \
        docs/runs/bench_L24_all_T128_eval640_b597f33.json

Each argument is one bench run: a bench.py report, or several joined by commas that together time each network once
(the rules' networks one day, a search's the next). Speeds compare only within one report, so each network's savings
are against the interleaved its own report times; a report that times a depth's networks without it is refused.
Prints one Markdown table per depth, a column per run in the order given (named under the tables), and for each network
the runs in which both savings reach the goal.
"""
import sys

from absl import app

from config import define_verbose_flag
from depth import GOAL_SAVING, RATIOS, interleaved, report_savings, role
from pareto import mean_and_std


def run_savings(paths):
    """depth.report_savings over the reports of one bench run, which may time each network only once; interleaved,
    which each report times, left out."""
    savings, source = {}, {}
    for path in paths:
        for depth, networks in report_savings(path)[0].items():
            for architecture, saved in networks.items():
                if architecture == interleaved(depth):
                    continue
                if architecture in source:
                    raise ValueError(f"{source[architecture]} and {path} both time {architecture}: one bench run "
                                     "gives each network once.")
                source[architecture] = path
                savings.setdefault(depth, {})[architecture] = saved
    return savings


def savings_by_depth(runs):
    """{depth: {architecture: [its savings in each run, None where that run does not time it]}} (runs: lists of report
    paths), networks in the order the runs first time them."""
    table = {}
    for index, paths in enumerate(runs):
        for depth, networks in run_savings(paths).items():
            for architecture, saved in networks.items():
                table.setdefault(depth, {}).setdefault(architecture, [None] * len(runs))[index] = saved
    return dict(sorted(table.items()))


def spread_text(values):
    """"21.1 ± 3.7%" over the runs that measured it (the mean alone for one)."""
    mean, std = mean_and_std(values)
    return f"{100 * mean:.1f}%" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}%"


def markdown(depth, networks, runs):
    """One depth's table: per run the training and inference savings, then their mean ± std and the goal's count."""
    lines = [f"| {depth}-block network | " + " | ".join(f"run {run}" for run in runs)
             + f" | training, mean ± std | inference, mean ± std | both ≥ {100 * GOAL_SAVING:.0f}% |",
             "| --- |" + " ---: |" * (len(runs) + 3)]
    for architecture, per_run in networks.items():
        measured = [saved for saved in per_run if saved is not None]
        cells = ["" if saved is None else f"{100 * saved[0]:.1f}%, {100 * saved[1]:.1f}%" for saved in per_run]
        met = sum(min(saved) >= GOAL_SAVING for saved in measured)
        name = role(architecture, RATIOS)
        name = f"`{name}`" if name == architecture else f"{name}: `{architecture}`"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {spread_text([s[0] for s in measured])} "
                     f"| {spread_text([s[1] for s in measured])} | {met} of {len(measured)} |")
    return "\n".join(lines)


def main(argv):
    runs = [[path for path in argument.split(",") if path] for argument in argv[1:]]
    try:
        if not runs:
            raise ValueError("name the bench.py reports (JSON) as arguments, one bench run each.")
        table = savings_by_depth(runs)
    except (ValueError, OSError) as error:
        sys.exit(f"savings.py: error: {error}")
    numbers = range(1, len(runs) + 1)
    for depth, networks in table.items():
        print(markdown(depth, networks, numbers) + "\n")
    print("\n".join(f"run {number}: {', '.join(paths)}" for number, paths in zip(numbers, runs)))


if __name__ == "__main__":
    define_verbose_flag()
    app.run(main)
