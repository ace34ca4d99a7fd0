"""Draws how each block chose among attention, dense and identity during the search.

    python plot_arch.py logs/base            # writes logs/base/pi.gif and logs/base/pi.png

Reads the run's pi_history.jsonl (one record per logged step: step, tau, pi [num_blocks, 3]) and
renders the blocks x {attention, dense, identity} heatmap with the most likely choice's
probability in each block's row: an animated GIF of at most MAX_FRAMES records, evenly spaced from
the first to the last, and the final frame as a PNG. Prints the derived architecture string for
`--architecture`.
"""
import io
import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")  # Headless: files only, no window.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from PIL import Image  # noqa: E402

import model  # noqa: E402

# pi's columns by name, in the order of model.CANDIDATES (the architecture string's letters): the
# figure's labels and train.py's TensorBoard tags.
CANDIDATE_NAMES = tuple({"A": "attention", "D": "dense", "I": "identity"}[letter] for letter in model.CANDIDATES)
PI_HISTORY_FILE = "pi_history.jsonl"
MAX_FRAMES = 100  # 20 s at 5 frames a second; a 20-epoch run's 540 records would make a 1.5 MB GIF.


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
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def read_history(run_dir):
    path = pathlib.Path(run_dir) / PI_HISTORY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pi history; is {run_dir} the run directory of a SuperNet?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def frame_indices(records, max_frames):
    """Up to max_frames indices of `records` records, evenly spaced, the first and the last included."""
    return np.unique(np.linspace(0, records - 1, min(max_frames, records)).round().astype(int)).tolist()


def plot_history(run_dir, max_frames=MAX_FRAMES):
    """Writes pi.gif (up to max_frames records, the first and last among them) and pi.png (the last) into
    `run_dir`; returns the derived string."""
    history = read_history(run_dir)
    frames = [Image.open(io.BytesIO(render_pi(history[i]["pi"], f"step {history[i]['step']}  tau {history[i]['tau']:.3f}")))
              .convert("RGB") for i in frame_indices(len(history), max_frames)]
    frames[0].save(pathlib.Path(run_dir) / "pi.gif", save_all=True, append_images=frames[1:], duration=200, loop=0)
    frames[-1].save(pathlib.Path(run_dir) / "pi.png")
    return model.derived_architecture(history[-1]["pi"])


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("Usage: python plot_arch.py RUN_DIR")
    try:
        architecture = plot_history(argv[1])
    except FileNotFoundError as error:
        sys.exit(f"plot_arch.py: error: {error}")
    print(f"Wrote {argv[1]}/pi.gif and pi.png. Derived architecture: --architecture={architecture}")


if __name__ == "__main__":
    app.run(main)
