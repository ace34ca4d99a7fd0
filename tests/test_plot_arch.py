"""plot_arch.py: one GIF frame per logged step, the derived architecture and since when it held, trajectories."""
import json

import numpy as np
from PIL import Image

import plot_arch
from runs import Run


def test_gif_has_one_frame_per_record_and_derives_the_architecture(tmp_path):
    rng = np.random.default_rng(0)
    records = [dict(step=step * 100, tau=1.0 / step, pi=rng.dirichlet(np.ones(3), size=4).tolist()) for step in range(1, 7)]
    final = [[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.3, 0.6, 0.1], [0.45, 0.1, 0.45001]]  # A, I, D, then I by a hair.
    records.append(dict(step=700, tau=0.1, pi=final))
    Run(tmp_path).pi_history_path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    architecture, _ = plot_arch.plot_history(tmp_path)
    assert architecture == "AIDI"
    with Image.open(tmp_path / "pi.gif") as gif:
        assert gif.n_frames == len(records)
    assert Image.open(tmp_path / "pi.png").size[0] > 0
    plot_arch.plot_history(tmp_path, max_frames=3)
    with Image.open(tmp_path / "pi.gif") as gif:
        assert gif.n_frames == 3


def test_long_histories_keep_evenly_spaced_frames_with_the_first_and_last():
    assert plot_arch.frame_indices(7, 3) == [0, 3, 6]
    assert plot_arch.frame_indices(540, 100)[:3] == [0, 5, 11] and plot_arch.frame_indices(540, 100)[-1] == 539
    assert len(plot_arch.frame_indices(540, 100)) == 100 and plot_arch.frame_indices(4, 100) == [0, 1, 2, 3]


def test_held_since_is_the_first_step_of_the_last_unbroken_run_of_the_final_architecture():
    attention, dense = [[0.6, 0.3, 0.1]], [[0.2, 0.7, 0.1]]
    history = [dict(step=100 * i, tau=1.0, pi=pi) for i, pi in
               enumerate([attention, dense, dense, attention, dense, dense, dense], start=1)]
    assert plot_arch.held_since(history) == ("D", 500)  # Dense also led at steps 200-300, then lost it at 400.
    assert plot_arch.held_since(history[:1]) == ("A", 100)
    assert plot_arch.held_since([dict(h, pi=dense) for h in history]) == ("D", 100)


def write_history(run_dir, records):
    run_dir.mkdir()
    Run(run_dir).pi_history_path.write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_trajectories_keep_the_records_up_to_max_step_in_order():
    pi = lambda a: [[a, 1 - a, 0.0], [0.0, a, 1 - a]]
    history = [dict(step=100 * i, tau=1.0, pi=pi(i / 10)) for i in range(1, 6)]
    steps, kept = plot_arch.trajectories(history, max_step=300)
    assert steps.tolist() == [100, 200, 300] and kept.shape == (3, 2, 3)
    np.testing.assert_allclose(kept[:, 0, 0], [0.1, 0.2, 0.3])  # Block 0's attention, step by step.
    np.testing.assert_allclose(kept[:, 1, 2], [0.9, 0.8, 0.7])  # Block 1's identity.
    assert plot_arch.trajectories(history)[0].tolist() == [100, 200, 300, 400, 500]


def test_trajectories_figure_has_a_column_per_run(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("one", "two"):
        write_history(tmp_path / name, [dict(step=100 * i, tau=1.0, pi=rng.dirichlet(np.ones(3), size=4).tolist())
                                        for i in range(1, 5)])
    plot_arch.plot_trajectories([tmp_path / "one"], tmp_path / "single.png")
    plot_arch.plot_trajectories([tmp_path / "one", tmp_path / "two"], tmp_path / "pair.png", max_step=300)
    single, pair = Image.open(tmp_path / "single.png").size, Image.open(tmp_path / "pair.png").size
    assert pair[1] == single[1] and pair[0] == 2 * single[0]  # 3.2 inches wider per run, as tall.
