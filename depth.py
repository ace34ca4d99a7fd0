"""PAR's trade at depth (issue 35): each network's gap to interleaved and its savings, per depth, table and chart.

    python depth.py --bench=docs/runs/stage2_bench_T128_eval640_8a0fc30.json --output=docs/depth.png \
        docs/runs/tuneT128_lr4e-3_e2 'docs/runs/T128_ADADAD_s*' 'docs/runs/T128_ADADDD_s*' 'docs/runs/T128_ADDDDD_s*'

Each positional argument names stage-2 run directories (a glob). A run's depth is its architecture's length. Within
a depth every run must share one recipe but the seed (pareto.stage2_scores refuses otherwise); depths may differ (a
learning rate or --pre_norm tuned for interleaved at that depth, printed below the table), but not in their data.
Each network is named by its role: `interleaved` ((AD) repeated, the baseline of its depth), `par_ratio=P` when it
is config.par_architecture(depth, P) for a P in --ratios (one network may be the layout of several ratios:
ADDDDD is 5, 6 and 8 at 6 blocks; it is listed once, under all of them), else its string.

The gap is mean validation score / interleaved's mean at that depth - 1. Its error propagates both spreads (the
sample standard deviations over seeds, as pareto.py's error bars) to first order:
    gap error = (mean / base) * sqrt((std / mean)^2 + (base std / base)^2),
and is not given where either side has one seed (no spread measured). Savings are 1 - step time / interleaved's,
for training and for inference, each from the bench.py report (--bench) that times that network beside interleaved.
Prints the table in Markdown; --output draws the gaps against depth, one line per ratio (the goal band, gap <= 1%,
shaded), and beside them the savings against depth where a bench report is given. Networks that are neither
interleaved nor a ratio's layout (a search's) are crosses of their own, named in the table.
"""
from plot_arch import png_bytes  # First: it keeps TensorFlow's lines off the console and makes matplotlib headless.

import math
import sys

import matplotlib.pyplot as plt
from absl import app, flags
from matplotlib.lines import Line2D

from config import define_verbose_flag, par_architecture
from pareto import (differences, first_difference, mean_and_std, recipe, run_directories, stage2_scores, step_costs,
                    with_spread)
from reliability import write_whole
from runs import Run, read_record

GOAL_GAP = 0.01  # The goal: at most 1% worse than interleaved, over seeds.
GOAL_SAVING = 0.20  # ... with training and inference steps each at least 20% faster.
RATIOS = (4, 5, 6, 8)  # The --par_ratio values named and drawn unless --ratios says otherwise.


def interleaved(depth):
    """Transformer-XL's stack at this depth, the baseline: (AD) repeated; None at an odd depth, which has none."""
    return "AD" * (depth // 2) if depth % 2 == 0 else None


def par_ratios(architecture, ratios):
    """The ratios whose config.par_architecture at this depth is this architecture (none, one or several)."""
    return [ratio for ratio in ratios if par_architecture(len(architecture), ratio) == architecture]


def role(architecture, ratios):
    """How the write-up names a network: "interleaved", "par_ratio=5, 6, 8" (each ratio it is the layout of), both
    joined by " = " should one network be both, else the architecture string."""
    names = ["interleaved"] if architecture == interleaved(len(architecture)) else []
    if matched := par_ratios(architecture, ratios):
        names.append("par_ratio=" + ", ".join(f"{ratio:g}" for ratio in matched))
    return " = ".join(names) or architecture


def runs_by_depth(directories):
    """{depth: [run directories]}, shallowest first, and {depth: the config record of its first run}. Refuses a run
    without a fixed architecture (a search), and depths trained on different data (the gaps would not compare)."""
    by_depth, records = {}, {}
    for directory in directories:
        record = read_record(Run(directory).config_path)
        architecture = record["model"].get("architecture")
        if not architecture:
            raise ValueError(f"{directory}: its config.json has no fixed architecture; a search is not a stage-2 run.")
        depth = len(architecture)
        by_depth.setdefault(depth, []).append(directory)
        records.setdefault(depth, (directory, record))
    first_directory, first = next(iter(records.values()), (None, None))
    for directory, record in records.values():
        if field := first_difference(dict(data=first["data"]), dict(data=record["data"])):
            raise ValueError(f"{directory} and {first_directory} differ in {field}: the depths are compared on one "
                             "data set.")
    return dict(sorted(by_depth.items())), {depth: record for depth, (_, record) in sorted(records.items())}


def report_savings(path):
    """({depth: {architecture: (training, inference) step time saved against that depth's interleaved, as
    fractions}}, the report's inference memory) for one bench.py report. Speeds compare only within one run, so a
    report that times a depth's networks without its interleaved is refused."""
    costs, eval_mem_len = step_costs(path)
    by_depth = {}
    for architecture, cost in costs.items():
        by_depth.setdefault(len(architecture), {})[architecture] = cost
    savings = {}
    for depth, timed in sorted(by_depth.items()):
        baseline = interleaved(depth)
        if baseline not in timed:
            raise ValueError(f"{path} times {depth}-block networks without interleaved "
                             f"({baseline or '(AD) repeated'}), which their savings are measured against.")
        savings[depth] = {architecture: tuple(1 - part / base for part, base in zip(cost, timed[baseline]))
                          for architecture, cost in timed.items()}
    return savings, eval_mem_len


def bench_by_depth(paths):
    """{depth: [(a bench.py report that times its networks, its inference memory, report_savings' savings at that
    depth)]}; a report may time several depths, and a depth may be timed by several reports (networks benched on
    different days; depth_savings takes each network from its own)."""
    reports = {}
    for path in paths:
        savings, eval_mem_len = report_savings(path)
        for depth, saved in savings.items():
            reports.setdefault(depth, []).append((path, eval_mem_len, saved))
    return reports


def baseline_of(depth, architectures):
    """Interleaved at this depth, which every gap and saving is measured against; an error where it was not run."""
    baseline = interleaved(depth)
    if baseline not in architectures:
        raise ValueError(f"{depth} blocks: no interleaved run ({baseline or '(AD) repeated'}), which the gaps are "
                         "measured against.")
    return baseline


def depth_savings(reports, architectures, baseline):
    """({architecture: (training, inference) step time saved against the baseline, as fractions}, {report: its
    inference memory}). Each network's savings come from the one report that times it, beside the baseline timed in
    that same run. reports as bench_by_depth gives them for one depth."""
    saved, eval_mem_lens, source = {baseline: (0.0, 0.0)}, {}, {}
    for path, eval_mem_len, timed in reports:
        wanted = sorted(set(timed) & set(architectures) - {baseline})
        if wanted:
            eval_mem_lens[path] = eval_mem_len
        for architecture in wanted:
            if architecture in source:
                raise ValueError(f"{source[architecture]} and {path} both time {architecture}: give one report per "
                                 "network.")
            source[architecture] = path
            saved[architecture] = timed[architecture]
    if missing := sorted(set(architectures) - set(saved)):
        named = ", ".join(path for path, _, _ in reports)
        raise ValueError(f"{named}: no report times {', '.join(missing)}; bench it beside {baseline}.")
    return saved, eval_mem_lens


def gap(mean, std, base_mean, base_std):
    """(mean / base_mean - 1, its error propagated from both spreads to first order; None where one is unmeasured)."""
    ratio = mean / base_mean
    if std is None or base_std is None:
        return ratio - 1, None
    return ratio - 1, ratio * math.hypot(std / mean, base_std / base_mean)


def depth_rows(depth, groups, ratios, saved=None):
    """One dict per network of one depth (groups as pareto.stage2_scores gives them; saved as depth_savings, or
    None): its seeds and scores, gap to interleaved and savings. Interleaved first, then by ratio, then by string."""
    baseline = baseline_of(depth, groups)
    base_mean, base_std = mean_and_std(groups[baseline]["valid"])
    rows = []
    for architecture, group in groups.items():
        seeds = group["seed"]
        if len(set(seeds)) < len(seeds):
            repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
            raise ValueError(f"{architecture} has seed {repeated[0]} more than once: a run given twice?")
        mean, std = mean_and_std(group["valid"])
        change, change_error = (0.0, None) if architecture == baseline else gap(mean, std, base_mean, base_std)
        train_saving, inference_saving = saved[architecture] if saved else (None, None)
        rows.append(dict(depth=depth, architecture=architecture, role=role(architecture, ratios),
                         ratios=par_ratios(architecture, ratios), valid=dict(sorted(zip(seeds, group["valid"]))),
                         mean=mean, std=std, gap=change, gap_error=change_error,
                         train_saving=train_saving, inference_saving=inference_saving))
    return sorted(rows, key=lambda r: (r["architecture"] != baseline, min(r["ratios"], default=math.inf),
                                       r["architecture"]))


def percent(fraction):
    return "—" if fraction is None else f"{100 * fraction:.0f}%"


def gap_text(row):
    """"+1.9 ± 0.4%", or the gap alone where its error is not measured; "—" for interleaved itself."""
    if row["architecture"] == interleaved(row["depth"]):
        return "—"
    error = "" if row["gap_error"] is None else f" ± {100 * row['gap_error']:.1f}"
    return f"{100 * row['gap']:+.1f}{error}%"


def markdown(rows, score):
    unit, digits = ("bits/char", 3) if score == "bits_per_character" else ("word ppl", 1)
    lines = [f"| blocks | network | architecture | seeds | valid {unit} | per seed | vs interleaved | training saving "
             "| inference saving |", "| ---: | --- | --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        baseline = r["architecture"] == interleaved(r["depth"])
        per_seed = ", ".join(f"s{seed} {value:.{digits}f}" for seed, value in r["valid"].items())
        lines.append(f"| {r['depth']} | {r['role']} | `{r['architecture']}` | {len(r['valid'])} "
                     f"| {with_spread(r['mean'], r['std'], digits)} | {per_seed} | {gap_text(r)} "
                     f"| {'—' if baseline else percent(r['train_saving'])} "
                     f"| {'—' if baseline else percent(r['inference_saving'])} |")
    return "\n".join(lines)


def notes(rows, records, reports, eval_mem_lens):
    """The lines under the table: where each depth's savings come from, how its recipe differs from the shallowest
    depth's, and each network that is the layout of several ratios."""
    lines = []
    depths = list(records)
    for depth in depths:
        if eval_mem_lens.get(depth):
            used = ", ".join(f"{path} (inference at memory {memory})" for path, memory in eval_mem_lens[depth].items())
            lines.append(f"{depth} blocks: savings from {used}.")
        else:
            lines.append(f"{depth} blocks: no bench report times these networks, so no savings.")
        changed = [f"{name} {left} -> {right}"
                   for name, left, right in differences(recipe(records[depths[0]]), recipe(records[depth]))]
        if changed:
            lines.append(f"{depth} blocks: recipe differs from {depths[0]} blocks' in {', '.join(changed)}.")
    for r in rows:
        if len(r["ratios"]) > 1:
            listed = ", ".join(f"{ratio:g}" for ratio in r["ratios"][:-1]) + f" and {r['ratios'][-1]:g}"
            lines.append(f"{r['depth']} blocks: {r['architecture']} is the layout of par_ratio {listed}: one network, "
                         "listed once.")
    for depth, timed_reports in sorted(reports.items()):
        for path, _, _ in timed_reports if depth not in records else []:
            lines.append(f"{path} times {depth}-block networks, of which no run is given: not used.")
    return lines


def ratio_rows(rows, ratio, key):
    """The rows of the networks that are this ratio's layout (one a depth), shallowest first, where key is measured."""
    return sorted((r for r in rows if ratio in r["ratios"] and r[key] is not None), key=lambda r: r["depth"])


def other_rows(rows, key):
    """The rows of networks that are neither interleaved nor a ratio's layout (a search's, say), where key is
    measured: each a point of its own, named in the table."""
    return [r for r in rows if not r["ratios"] and r["architecture"] != interleaved(r["depth"]) and r[key] is not None]


def error_bars(rows):
    """Each row's gap error in %, NaN (no bar) where one side has one seed."""
    return [math.nan if r["gap_error"] is None else 100 * r["gap_error"] for r in rows]


OTHER = dict(color="black", marker="X", linestyle="none")  # How the chart draws other_rows.
# The savings panel's steps: (row key, name, line look); training solid and filled, inference dashed and hollow.
SAVINGS = (("train_saving", "training", dict(linestyle="-")),
           ("inference_saving", "inference", dict(linestyle="--", markerfacecolor="white")))


def chart(rows, ratios, score, title):
    """The figure: each ratio's gap to interleaved against depth (error bars over seeds, the goal band shaded), and
    where any bench report was given, its training (solid, filled) and inference (dashed, hollow) savings against
    depth beside it; other networks as black crosses. A network that is several ratios' layout is a point of each
    of their lines: their markers, smaller for each later ratio, nest rather than hide each other."""
    with_savings = any(r["train_saving"] is not None for r in rows)
    figure, panels = plt.subplots(1, 1 + with_savings, figsize=(5.5 * (1 + with_savings), 4.2), dpi=100, squeeze=False)
    panels = panels[0]
    depths = sorted({r["depth"] for r in rows})
    styles = {ratio: dict(color=f"C{index % 10}", marker="o", markersize=max(3, 9 - 2 * index))
              for index, ratio in enumerate(ratios)}
    gaps = panels[0]
    for ratio in ratios:
        if points := ratio_rows(rows, ratio, "gap"):
            gaps.errorbar([r["depth"] for r in points], [100 * r["gap"] for r in points], capsize=3,
                          yerr=error_bars(points), label=f"par_ratio={ratio:g}", **styles[ratio])
    if others := other_rows(rows, "gap"):
        gaps.errorbar([r["depth"] for r in others], [100 * r["gap"] for r in others], capsize=3,
                      yerr=error_bars(others), label="other networks (see the table)", **OTHER)
    gaps.axhline(0, color="black", linewidth=0.8, label="interleaved")
    bottom, top = gaps.get_ylim()
    bottom = min(bottom, -1.0)
    gaps.axhspan(bottom, 100 * GOAL_GAP, color="tab:green", alpha=0.12, label=f"goal: gap <= {100 * GOAL_GAP:g}%")
    gaps.set_ylim(bottom, max(top, 2 * 100 * GOAL_GAP))
    unit = "bits per character" if score == "bits_per_character" else "word perplexity"
    gaps.set_ylabel(f"validation {unit} vs interleaved, %\n(mean ± std over seeds)")
    gaps.legend(fontsize=8)
    if with_savings:
        saved = panels[1]
        for ratio in ratios:
            for key, name, look in SAVINGS:
                if points := ratio_rows(rows, ratio, key):
                    saved.plot([r["depth"] for r in points], [100 * r[key] for r in points],
                               label=f"par_ratio={ratio:g}, {name}", **styles[ratio], **look)
        for key, name, look in SAVINGS:
            if others := other_rows(rows, key):
                saved.plot([r["depth"] for r in others], [100 * r[key] for r in others], label=f"other, {name}",
                           **{**look, **OTHER})
        goal = saved.axhline(100 * GOAL_SAVING, color="tab:green", linestyle=":",
                             label=f"goal: {100 * GOAL_SAVING:g}% less time")
        saved.set_ylabel("step time saved vs interleaved, %\n(bench.py, each beside interleaved in one run)")
        # Colours name the ratios in the first panel's legend; this one names the line styles.
        saved.legend(handles=[Line2D([], [], color="gray", marker="o", label=f"{name} step", **look)
                              for _, name, look in SAVINGS] + [goal], fontsize=8)
    for axes in panels:
        axes.set_xticks(depths)
        axes.set_xlabel("blocks")
        axes.grid(alpha=0.3)
    figure.suptitle(title, fontsize=10)
    return figure


def parsed_ratios(values):
    """--ratios as numbers; a value that is not a positive number is an error naming it."""
    try:
        ratios = [float(value) for value in values]
    except ValueError:
        ratios = []
    if not ratios or min(ratios) <= 0:
        raise ValueError(f"--ratios={','.join(values)}: give positive numbers (blocks per attention block), "
                         "e.g. 4,5,6,8.")
    return ratios


def main(argv):
    try:
        ratios = parsed_ratios(FLAGS.ratios)
        if not argv[1:]:
            raise ValueError("name the stage-2 run directories (globs) as arguments.")
        by_depth, records = runs_by_depth(run_directories(argv[1:]))
        reports = bench_by_depth([path for value in FLAGS.bench for path in value.split(",") if path])
        rows, eval_mem_lens, score = [], {}, None
        for depth, directories in by_depth.items():
            groups, score = stage2_scores(directories)
            saved = None
            if depth in reports:
                saved, eval_mem_lens[depth] = depth_savings(reports[depth], list(groups), baseline_of(depth, groups))
            rows += depth_rows(depth, groups, ratios, saved)
    except (ValueError, OSError) as error:
        sys.exit(f"depth.py: error: {error}")
    print(markdown(rows, score))
    print("\n".join(notes(rows, records, reports, eval_mem_lens)))
    if FLAGS.output:
        write_whole(FLAGS.output, png_bytes(chart(rows, ratios, score, FLAGS.title)))
        print(f"Wrote {FLAGS.output}.")


def define_flags():
    flags.DEFINE_multi_string("bench", [], "bench.py JSON report timing networks beside their depth's interleaved "
                              "(repeat it, or give a comma-separated list; one report per network); a depth without "
                              "one has no savings.")
    flags.DEFINE_list("ratios", [str(ratio) for ratio in RATIOS],
                      "The --par_ratio values whose layouts are named and drawn.")
    flags.DEFINE_string("output", None, "Where to write the chart (PNG); unset: the table only.")
    flags.DEFINE_string("title", "", "The chart's title.")
    return define_verbose_flag()


if __name__ == "__main__":
    FLAGS = define_flags()
    app.run(main)
