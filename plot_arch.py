"""Draws how each block chose among attention, dense and identity during the search.

    python plot_arch.py logs/base            # writes logs/base/pi.gif and logs/base/pi.png
    python plot_arch.py --trajectories=pi.png --max_step=20000 logs/base logs/other   # runs side by side

Reads the run's pi_history.jsonl (one record per logged step: step, tau, pi [num_blocks, 3]) and
renders the blocks x {attention, dense, identity} heatmap with the most likely choice's
probability in each block's row: an animated GIF of at most MAX_FRAMES records, evenly spaced from
the first to the last, and the final frame as a PNG. Prints the derived architecture string for
`--architecture`. With --trajectories, draws instead each candidate's probability against the step,
one panel per block and run, to compare how runs searched.
"""
import quiet_tensorflow  # noqa: F401  (first: keeps TensorFlow's start-up lines off the console)

import io
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")  # Headless: files only, no window.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

from config import CANDIDATE_NAMES, define_verbose_flag, derived_architecture  # noqa: E402
from reliability import write_whole  # noqa: E402
from runs import Run  # noqa: E402

MAX_FRAMES = 100  # 20 s at 5 frames a second; a 20-epoch run's 540 records would make a 1.5 MB GIF.
COLORS = {"attention": "tab:red", "dense": "tab:blue", "identity": "tab:gray"}


def render_pi(pi, title):
    """PNG bytes of the blocks x candidates heatmap, the most likely choice's probability written in it."""
    pi = np.asarray(pi)
    figure, axes = plt.subplots(figsize=(4, 1 + 0.45 * len(pi)), dpi=80)
    axes.imshow(pi, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for block, row in enumerate(pi):
        choice = int(np.argmax(row))
        axes.text(choice, block, f"{row[choice]:.2f}", ha="center", va="center", color="black" if row[choice] > 0.5 else "white")
    axes.set_xticks(range(len(CANDIDATE_NAMES)), CANDIDATE_NAMES)
    axes.set_yticks(range(len(pi)), [f"block {i}" for i in range(len(pi))])
    axes.set_title(title, fontsize=9)
    return png_bytes(figure)


def png_bytes(figure):
    """The figure, laid out, as PNG bytes; closed, so that drawing many keeps no memory."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def held_since(history):
    """(the last record's derived architecture, the first step from which every record derives it).

    A search has settled when this step stays put while the run goes on.
    """
    derived = [derived_architecture(record["pi"]) for record in history]
    start = len(derived) - 1
    while start > 0 and derived[start - 1] == derived[-1]:
        start -= 1
    return derived[-1], history[start]["step"]


def frame_indices(records, max_frames):
    """Up to max_frames indices of `records` records, evenly spaced, the first and the last included."""
    return np.unique(np.linspace(0, records - 1, min(max_frames, records)).round().astype(int)).tolist()


def plot_history(run_dir, max_frames=MAX_FRAMES):
    """Writes pi.gif (up to max_frames records, the first and last among them) and pi.png (the last) into
    `run_dir`; returns held_since of the history: the derived string and the step since which it has held."""
    run = Run(run_dir)
    history = run.read_pi_history()
    frames = [Image.open(io.BytesIO(render_pi(history[i]["pi"], f"step {history[i]['step']}  tau {history[i]['tau']:.3f}")))
              .convert("RGB") for i in frame_indices(len(history), max_frames)]
    write_whole(run.pi_gif_path, image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0))
    write_whole(run.pi_png_path, image_bytes(frames[-1], "PNG"))
    return held_since(history)


def image_bytes(image, image_format, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def trajectories(history, max_step=0):
    """(steps [N], pi [N, blocks, candidates]) of the records up to max_step (0: all)."""
    kept = [record for record in history if not max_step or record["step"] <= max_step]
    return np.array([record["step"] for record in kept]), np.array([record["pi"] for record in kept])


def plot_trajectories(run_dirs, output, max_step=0):
    """Writes a PNG to `output`: each candidate's pi against the step, a row per block, a column per run."""
    runs = [trajectories(Run(run_dir).read_pi_history(), max_step) for run_dir in run_dirs]
    num_blocks = max(pi.shape[1] for _, pi in runs)
    figure, axes = plt.subplots(num_blocks, len(runs), figsize=(3.2 * len(runs), 1.1 * num_blocks + 0.8), dpi=80,
                                sharex=True, sharey=True, squeeze=False)
    for column, (run_dir, (steps, pi)) in enumerate(zip(run_dirs, runs)):
        axes[0, column].set_title(pathlib.Path(run_dir).name, fontsize=9)
        for block in range(pi.shape[1]):
            for candidate, name in enumerate(CANDIDATE_NAMES):
                axes[block, column].plot(steps, pi[:, block, candidate], color=COLORS[name], label=name, linewidth=1)
        axes[-1, column].set_xlabel("step", fontsize=8)
    for block in range(num_blocks):
        axes[block, 0].set_ylabel(f"block {block}", fontsize=8)
    axes[0, 0].set_ylim(0, 1)  # Shared by every panel.
    axes[0, -1].legend(fontsize=7, loc="upper right")
    write_whole(output, png_bytes(figure))


def main(argv):
    if len(argv) < 2 or (len(argv) != 2 and not FLAGS.trajectories):
        raise app.UsageError("Usage: python plot_arch.py RUN_DIR, or python plot_arch.py --trajectories=OUT.png "
                             "RUN_DIR [RUN_DIR ...]")
    try:
        if FLAGS.trajectories:
            plot_trajectories(argv[1:], FLAGS.trajectories, FLAGS.max_step)
            print(f"Wrote {FLAGS.trajectories}.")
        else:
            architecture, since = plot_history(argv[1])
            print(f"Wrote {Run(argv[1]).pi_gif_path} and pi.png. Derived architecture: --architecture={architecture}, "
                  f"held since step {since}.")
    except FileNotFoundError as error:
        sys.exit(f"plot_arch.py: error: {error}")


def define_flags():
    flags.DEFINE_string("trajectories", None, "Write the runs' pi trajectories, side by side, to this PNG "
                        "instead of one run's pi.gif and pi.png.")
    flags.DEFINE_integer("max_step", 0, "With --trajectories: only the records up to this step (0: all), "
                         "to compare runs over the same budget.")
    return define_verbose_flag()


if __name__ == "__main__":
    FLAGS = define_flags()
    app.run(main)
