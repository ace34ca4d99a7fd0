"""base_model.sh: builds the data only when the directory train.py will read lacks it, and restates no default."""
import os
import shutil
import subprocess

from conftest import REPO_ROOT

# Stand-ins beside a copy of the script, so that it runs in milliseconds: each prints its arguments.
STUB = 'import sys; print("{name}", *sys.argv[1:])\n'
DEFAULT_DATA_DIR = "stub_data/records"  # Not the real default: the script must read it from config.


def run_script(folder, *args):
    return subprocess.run(["bash", str(folder / "base_model.sh"), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def stub_repo(tmp_path):
    shutil.copy(REPO_ROOT / "base_model.sh", tmp_path)
    (tmp_path / "create_tfrecords.sh").write_text('#!/usr/bin/env bash\necho build "$@"\n')
    (tmp_path / "create_tfrecords.sh").chmod(0o755)
    (tmp_path / "train.py").write_text(STUB.format(name="train"))
    (tmp_path / "config.py").write_text(f"DEFAULT_DATA_DIR = {DEFAULT_DATA_DIR!r}\n")
    return tmp_path


def test_missing_default_data_is_built_and_train_takes_its_own_defaults(tmp_path):
    result = run_script(stub_repo(tmp_path), "--epochs=1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"build --output_dir={DEFAULT_DATA_DIR}", "train --epochs=1"]


def test_a_given_data_dir_is_built_if_missing_and_used_as_is_when_present(tmp_path):
    folder = stub_repo(tmp_path)
    result = run_script(folder, "--data_dir=elsewhere", "--model_name=par", "--architecture=AAADDD")
    assert result.stdout.splitlines() == ["build --output_dir=elsewhere",
                                          "train --data_dir=elsewhere --model_name=par --architecture=AAADDD"]
    (folder / "elsewhere").mkdir()
    (folder / "elsewhere" / "metadata.json").write_text("{}")
    result = run_script(folder, "--data_dir=elsewhere")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["train --data_dir=elsewhere"]
