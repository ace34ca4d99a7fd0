"""colab.ipynb's Colab-only setup, run with google.colab, git, nvidia-smi and pip faked: outside a checkout with
no REPO_URL it stops in one line; otherwise it clones, installs (with TensorFlow's CUDA libraries when the
machine has a GPU) and says in one line whether TensorFlow uses a GPU. CI runs the whole notebook outside Colab
(tests/test_train.py); an unknown PRESET stops in one line."""
import os

import nbclient
import nbformat
import pytest

from conftest import REPO_ROOT

# Stand-ins, each logging its arguments to $FAKE_LOG: a git whose clone holds a train.py, an nvidia-smi that
# lists a GPU (exit 0) or finds none (exit 9), and a pip module that installs nothing.
FAKE_GIT = '#!/usr/bin/env bash\necho git "$@" >> "$FAKE_LOG"\nmkdir -p "${@: -1}" && touch "${@: -1}/train.py"\n'
FAKE_NVIDIA_SMI = '#!/usr/bin/env bash\necho "GPU 0: Fake GPU (UUID: GPU-0)"\nexit {status}\n'
FAKE_PIP = 'import os, sys\nwith open(os.environ["FAKE_LOG"], "a") as log:\n    print("pip", *sys.argv[1:], file=log)\n'


def fake_colab(tmp_path, monkeypatch, gpu):
    """Fakes on the PATH and PYTHONPATH of the kernels that this test starts; returns the log of their calls."""
    bin_dir, modules = tmp_path / "bin", tmp_path / "modules"
    (modules / "google" / "colab").mkdir(parents=True)
    (modules / "google" / "colab" / "__init__.py").write_text("")
    (modules / "pip").mkdir()
    (modules / "pip" / "__init__.py").write_text("")
    (modules / "pip" / "__main__.py").write_text(FAKE_PIP)
    bin_dir.mkdir()
    for name, script in (("git", FAKE_GIT), ("nvidia-smi", FAKE_NVIDIA_SMI.format(status=0 if gpu else 9))):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(modules), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # TensorFlow sees no GPU, whatever the machine has.
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.log"))
    (tmp_path / "calls.log").write_text("")
    return tmp_path / "calls.log"


def run_cells(folder, tags, **parameters):
    """Runs the cells of colab.ipynb with these tags in `folder`, with the parameters set, then prints the
    working directory; returns the executed notebook."""
    notebook = nbformat.read(REPO_ROOT / "colab.ipynb", as_version=4)
    cells = [next(cell for cell in notebook.cells if tag in cell.metadata.get("tags", [])) for tag in tags]
    cells[0].source += "".join(f"\n{name} = {value!r}" for name, value in parameters.items())
    notebook.cells = [*cells, nbformat.v4.new_code_cell("print('in', os.getcwd())")]
    client = nbclient.NotebookClient(notebook, timeout=300, resources={"metadata": {"path": str(folder)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError:
        pass
    return notebook


def printed(cell):
    return "".join(output.get("text", "") for output in cell.outputs)


def error_lines(cell):
    (error,) = [output for output in cell.outputs if output.output_type == "error"]
    return error.traceback


def test_outside_a_checkout_without_a_repository_address_it_stops_in_one_line(tmp_path, monkeypatch):
    calls = fake_colab(tmp_path, monkeypatch, gpu=True)
    setup = run_cells(tmp_path, ["parameters", "setup"], REPO_URL="").cells[1]
    (line,) = error_lines(setup)
    assert line.startswith("colab.ipynb: error: not in a checkout") and "set REPO_URL" in line
    assert calls.read_text() == ""  # Neither a clone of a placeholder nor an install.


@pytest.mark.parametrize("gpu", [True, False], ids=["gpu", "cpu"])
def test_on_colab_it_clones_installs_and_says_whether_a_gpu_is_in_use(tmp_path, monkeypatch, gpu):
    calls = fake_colab(tmp_path, monkeypatch, gpu)
    notebook = run_cells(tmp_path, ["parameters", "setup"], REPO_URL="https://example.org/par.git")
    extra = " tensorflow[and-cuda]>=2.21,<2.22" if gpu else ""
    assert calls.read_text().splitlines() == [
        "git clone --depth=1 https://example.org/par.git par-transformer-xl",
        "pip install -q -r requirements.txt" + extra]
    if gpu:  # nvidia-smi lists a GPU that TensorFlow does not see.
        assert "The machine has a GPU (nvidia-smi lists it) but TensorFlow" in printed(notebook.cells[1])
    else:
        assert "runs on the CPU: no GPU in use" in printed(notebook.cells[1])
    assert printed(notebook.cells[2]).strip() == f"in {tmp_path / 'par-transformer-xl'}"


def test_an_unknown_preset_stops_in_one_line_naming_the_presets():
    notebook = run_cells(REPO_ROOT, ["parameters", "setup", "presets"], PRESET="wt3_base")
    (line,) = error_lines(notebook.cells[2])
    assert line == ("colab.ipynb: error: PRESET='wt3_base': there is no configs/wt3_base.data.flags; choose one of "
                    "enwik8_base, text8_base, wt103_base, wt2_t128.")
