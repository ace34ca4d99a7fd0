"""plot_arch.py: one GIF frame per logged step, the derived architecture string, the candidates' names."""
import json

import numpy as np
from PIL import Image

import model
import plot_arch


def test_gif_has_one_frame_per_record_and_derives_the_architecture(tmp_path):
    rng = np.random.default_rng(0)
    records = [dict(step=step * 100, tau=1.0 / step, pi=rng.dirichlet(np.ones(3), size=4).tolist()) for step in range(1, 7)]
    final = [[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.3, 0.6, 0.1], [0.45, 0.1, 0.45001]]  # A, I, D, then I by a hair.
    records.append(dict(step=700, tau=0.1, pi=final))
    (tmp_path / plot_arch.PI_HISTORY_FILE).write_text("\n".join(json.dumps(r) for r in records) + "\n")
    architecture = plot_arch.plot_history(tmp_path)
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


def test_derived_architecture_reads_the_argmax_of_each_block():
    pi = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]
    assert model.derived_architecture(pi) == "ADI"


def test_candidate_names_are_the_architecture_letters_spelt_out():
    assert plot_arch.CANDIDATE_NAMES == ("attention", "dense", "identity")  # TensorBoard's pi/block_i/<name> tags.
    assert "".join(name[0].upper() for name in plot_arch.CANDIDATE_NAMES) == model.CANDIDATES
