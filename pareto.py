"""Stage 2 over seeds against measured cost: the table (mean ± std) and the Pareto chart of one regime.

    python pareto.py --bench=docs/runs/stage2_bench_T128.json --searches='docs/runs/searchT128_*' \
        --output=docs/pareto_T128.png 'docs/runs/T128_*'

Each positional argument names stage-2 run directories (a glob). They are grouped by architecture; every
run must share every setting but the seed, so that the seeds measure the spread of one recipe. Each
architecture's validation and test score is the mean and sample standard deviation over its runs, in
word perplexity (bits per character on character data). Its cost is the bench report's train and eval
step time per token. An architecture is marked as searched when a search in --searches derived it (its
results.json, or the argmax of its last pi record while it runs), so the mark comes from the searches' records, never from a list by hand.
Prints the table in Markdown, with each architecture's ratio to --baseline, names the architectures that are one
network (they differ only in where identity blocks sit), and draws the chart: score against train time per token
and against inference time per token, error bars over seeds.
"""
from plot_arch import png_bytes  # First: it keeps TensorFlow's lines off the console and makes matplotlib headless.

import glob
import statistics
import sys

import matplotlib.pyplot as plt
from matplotlib.transforms import Bbox
from absl import app, flags

from config import define_verbose_flag, derived_architecture
from reliability import read_json, write_whole
from runs import Run, read_record

SEED_FREE = ("seed",)  # The only setting that may differ between the runs of one table.


def run_directories(patterns):
    """The run directories each glob names, in order; a glob that names none is an error."""
    directories = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if not found:
            raise ValueError(f"{pattern!r} names no run directory.")
        directories += found
    return directories


def recipe(record):
    """What must agree between the runs of one table: the config record without the architecture and seed."""
    model = {k: v for k, v in record["model"].items() if k not in ("architecture", "num_layers")}
    train = {k: v for k, v in record["train"].items() if k not in SEED_FREE}
    return dict(model=model, train=train, data=record["data"])


def differences(a, b, prefix=""):
    """(dotted name, value in a, value in b) of each field where two nested dicts differ, in name order."""
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            yield from differences(left, right, f"{prefix}{key}.")
        elif left != right:
            yield f"{prefix}{key}", left, right


def first_difference(a, b):
    """The dotted name of the first field where two nested dicts differ, or None."""
    return next((name for name, _, _ in differences(a, b)), None)


def score_name(results):
    """The score a run's results.json reports for its data: bits per character, or word perplexity."""
    return "bits_per_character" if "valid_bits_per_character" in results else "word_perplexity"


def stage2_scores(directories):
    """{architecture: {"valid": [...], "test": [...], "seed": [...]}} (one entry per run, in the order given), and
    the score's name.

    Refuses runs whose recipes differ (naming the field and both runs), and runs without results.json.
    """
    groups, reference, name = {}, None, None
    for directory in directories:
        run = Run(directory)
        record = read_record(run.config_path)
        if reference is None:
            reference = (directory, record)
        field = first_difference(recipe(reference[1]), recipe(record))
        if field:
            raise ValueError(f"{directory} and {reference[0]} differ in {field}: a table compares seeds of one recipe.")
        if not run.results_path.is_file():
            raise ValueError(f"{run.results_path} is missing: {directory} has not finished.")
        results = read_json(run.results_path)
        name = name or score_name(results)
        group = groups.setdefault(record["model"]["architecture"], dict(valid=[], test=[], seed=[]))
        group["valid"].append(results[f"valid_{name}"])
        group["test"].append(results[f"test_{name}"])
        group["seed"].append(record["train"]["seed"])
    return groups, name


def searched_architectures(patterns):
    """{architecture: [search directories that derived it]}: each search's own final derivation (results.json),
    or where it has not finished, the argmax of its last pi record."""
    derived = {}
    for directory in run_directories(patterns):
        run = Run(directory)
        if run.results_path.is_file() and "derived_architecture" in (results := read_json(run.results_path)):
            architecture = results["derived_architecture"]
        elif history := run.pi_history_or_empty():
            architecture = derived_architecture(history[-1]["pi"])
        else:
            raise ValueError(f"{directory} has neither a derived architecture in results.json nor a pi history: "
                             "it is not a search.")
        derived.setdefault(architecture, []).append(directory)
    return derived


def same_networks(architectures):
    """{computing blocks: [architectures]} for each two or more that differ only in where identity blocks sit: an
    identity block is skipped, so they are one network, and with one seed they train alike."""
    groups = {}
    for architecture in sorted(set(architectures)):
        groups.setdefault(architecture.replace("I", ""), []).append(architecture)
    return {blocks: group for blocks, group in groups.items() if len(group) > 1}


def mean_and_std(values):
    """The mean and the sample standard deviation (None for one value: no spread is measured)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def step_costs(bench_path, architectures=None):
    """{architecture: (train µs per token, eval µs per token)} from a bench.py report for these architectures (None:
    every one it times), and its eval memory."""
    report = read_json(bench_path)
    tokens = report["batch_size"] * report["seq_len"]
    timed = {}
    for r in report["results"]:
        if architectures is None or r["architecture"] in architectures:
            if r["architecture"] in timed:
                raise ValueError(f"{bench_path} times {r['architecture']} more than once: bench one --precision.")
            timed[r["architecture"]] = r
    missing = sorted(set(architectures or ()) - set(timed))
    if missing:
        raise ValueError(f"{bench_path} has no timing of {', '.join(missing)}: bench them in the same run.")
    costs = {a: (1000 * r["train_ms_per_step"] / tokens, 1000 * r["eval_ms_per_step"] / tokens) for a, r in timed.items()}
    return costs, report["eval_mem_len"]


def table_rows(groups, costs, searched, baseline):
    """One dict per architecture, ordered by mean validation score: the figures of the Markdown table."""
    base_valid = mean_and_std(groups[baseline]["valid"])[0]
    base_train, base_eval = costs[baseline]
    rows = []
    for architecture, group in groups.items():
        valid, valid_std = mean_and_std(group["valid"])
        test, test_std = mean_and_std(group["test"])
        train, inference = costs[architecture]
        rows.append(dict(architecture=architecture, searched=len(searched.get(architecture, [])), seeds=len(group["valid"]),
                         valid=valid, valid_std=valid_std, test=test, test_std=test_std,
                         valid_change=valid / base_valid - 1, train=train, train_saving=1 - train / base_train,
                         inference=inference, inference_saving=1 - inference / base_eval))
    return sorted(rows, key=lambda row: row["valid"])


def with_spread(mean, std, digits):
    """"mean ± std", or the mean alone where one seed measured no spread."""
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(rows, score, eval_mem_len, baseline):
    unit, digits = ("bits/char", 3) if score == "bits_per_character" else ("word ppl", 1)
    lines = [f"| architecture | searches that derived it | seeds | valid {unit} | test {unit} | valid vs {baseline} "
             f"| train µs/token | train saving | inference µs/token (memory {eval_mem_len}) | inference saving |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| `{r['architecture']}` | {r['searched']} | {r['seeds']} | {with_spread(r['valid'], r['valid_std'], digits)} "
                     f"| {with_spread(r['test'], r['test_std'], digits)} | {100 * r['valid_change']:+.1f}% | {r['train']:.1f} "
                     f"| {100 * r['train_saving']:.0f}% | {r['inference']:.1f} | {100 * r['inference_saving']:.0f}% |")
    return "\n".join(lines)


def placed(row, ymax):
    """(height, label, on the axis) of a row's point: one scoring above ymax sits on the top edge, its label
    giving its score, so that one outlier does not squeeze the others into a line."""
    if ymax is None or row["valid"] <= ymax:
        return row["valid"], row["architecture"], True
    return ymax, f"{row['architecture']} ({row['valid']:.1f}, off the axis)", False


# Where a label may sit, in points from its point: right of it, then left (right-aligned), nearest first.
LABEL_OFFSETS = tuple((dx, dy) for up, down in ((4, -11), (14, -21), (24, -31), (34, -41))
                      for dx in (5, -5) for dy in (up, down))
MARKER_RADIUS = 4  # points: a label may not cover another point's marker.
LABEL_GAP = 3  # points kept clear between two labels, so that neighbours do not read as one word.


def place_labels(axes, labels):
    """Moves each label (annotations, best score first) to the first offset where it stays inside the axes and
    covers no label placed before it and no other point, so that near ties stay legible; where none is free, the first."""
    renderer = axes.figure.canvas.get_renderer()
    inside = axes.get_window_extent(renderer)
    radius = MARKER_RADIUS * axes.figure.dpi / 72
    markers = [Bbox.from_bounds(x - radius, y - radius, 2 * radius, 2 * radius)
               for x, y in axes.transData.transform([label.xy for label in labels])]
    gap = LABEL_GAP * axes.figure.dpi / 72
    taken = []
    for index, label in enumerate(labels):
        for dx, dy in LABEL_OFFSETS + LABEL_OFFSETS[:1]:
            label.set_position((dx, dy))
            label.set_horizontalalignment("left" if dx > 0 else "right")
            box = label.get_window_extent(renderer)
            with_gap = box.padded(gap)
            if inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1) and \
                    not any(with_gap.overlaps(other) for other in taken) and \
                    not any(box.overlaps(marker) for other, marker in enumerate(markers) if other != index):
                break
        taken.append(box)


def chart(rows, score, eval_mem_len, title, ymax=None):
    """The figure: the score against train and against inference time per token, searched points in red;
    scores above ymax are drawn as triangles on the top edge."""
    figure, panels = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100, sharey=True)
    for axes, key, label in ((panels[0], "train", "train step"), (panels[1], "inference", f"inference, memory {eval_mem_len}")):
        for r in rows:
            color = "tab:red" if r["searched"] else "tab:blue"
            height, name, on_axis = placed(r, ymax)
            axes.errorbar(r[key], height, yerr=r["valid_std"] if on_axis else None, fmt="o" if on_axis else "^",
                          color=color, capsize=3)
            # Out of the layout: placed after it, so that the layout cannot move them onto each other.
            axes.annotate(name, (r[key], height), xytext=LABEL_OFFSETS[0], textcoords="offset points", fontsize=8,
                          in_layout=False)
        axes.margins(x=0.15, y=0.1)  # Room for the labels of the outermost points.
        if ymax is not None:
            bottom = axes.get_ylim()[0]
            axes.set_ylim(bottom, ymax + 0.05 * (ymax - bottom))
        axes.set_xlabel(f"{label}: µs per token (bench.py)")
        axes.grid(alpha=0.3)
    panels[0].set_ylabel("validation " + ("bits per character" if score == "bits_per_character" else "word perplexity")
                         + ", mean ± std over seeds")
    panels[0].plot([], [], "o", color="tab:red", label="derived by a search")
    panels[0].plot([], [], "o", color="tab:blue", label="chosen by hand")
    panels[0].legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    for axes in panels:
        place_labels(axes, axes.texts)  # The labels, in the rows' order: best score first.
    return figure


def draw(rows, score, eval_mem_len, title, ymax=None):
    """The chart as PNG bytes."""
    return png_bytes(chart(rows, score, eval_mem_len, title, ymax))


def main(argv):
    try:
        groups, score = stage2_scores(run_directories(argv[1:]))
        if FLAGS.baseline not in groups:
            raise ValueError(f"--baseline={FLAGS.baseline}: no run of it among {' '.join(argv[1:])}.")
        costs, eval_mem_len = step_costs(FLAGS.bench, list(groups))
        searched = searched_architectures(FLAGS.searches) if FLAGS.searches else {}
    except (ValueError, OSError) as error:
        sys.exit(f"pareto.py: error: {error}")
    rows = table_rows(groups, costs, searched, FLAGS.baseline)
    print(markdown(rows, score, eval_mem_len, FLAGS.baseline))
    for architecture, directories in sorted(searched.items()):
        retrained = "" if architecture in groups else " (no stage-2 run of it given)"
        print(f"{architecture} derived by {', '.join(directories)}{retrained}")
    for blocks, group in same_networks(list(groups) + list(searched)).items():
        print(f"{' and '.join(group)} are one network, {blocks}: identity blocks are skipped.")
    if FLAGS.output:
        write_whole(FLAGS.output, draw(rows, score, eval_mem_len, FLAGS.title, FLAGS.ymax))
        print(f"Wrote {FLAGS.output}.")


def define_flags():
    flags.DEFINE_string("bench", None, "bench.py JSON report timing every architecture of the table.", required=True)
    flags.DEFINE_list("searches", [], "Globs of search runs; the architectures they derived are marked.")
    flags.DEFINE_string("baseline", "ADADAD", "The architecture that savings and perplexity changes are relative to.")
    flags.DEFINE_string("output", None, "Where to write the chart (PNG); unset: the table only.")
    flags.DEFINE_string("title", "", "The chart's title.")
    flags.DEFINE_float("ymax", None, "Top of the chart's score axis; a point above it is drawn on the top edge with its "
                       "score in its label. Unset: every point fits.")
    return define_verbose_flag()


if __name__ == "__main__":
    FLAGS = define_flags()
    app.run(main)
