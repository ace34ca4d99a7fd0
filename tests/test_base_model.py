"""base_model.sh: builds the data only when the directory train.py will read lacks it, a preset's flag file
(--flagfile) read as train.py reads it and its data built by the preset's data flags, and restates no default."""
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
    # The real config.py, which reads the flags as train.py does, with another default data directory.
    config = (REPO_ROOT / "config.py").read_text()
    (tmp_path / "config.py").write_text(config + f"\nDEFAULT_DATA_DIR = {DEFAULT_DATA_DIR!r}\n")
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


def write_preset(folder, name, train_lines, data_lines=None):
    (folder / "configs").mkdir(exist_ok=True)
    (folder / "configs" / f"{name}.flags").write_text("# A preset.\n" + "\n".join(train_lines) + "\n")
    if data_lines is not None:
        (folder / "configs" / f"{name}.data.flags").write_text("\n".join(data_lines) + "\n")


def test_a_presets_data_dir_is_built_with_its_data_flags_unless_a_later_flag_overrides_it(tmp_path):
    folder = stub_repo(tmp_path)
    write_preset(folder, "p", ["--data_dir=preset_data", "--epochs=3"], ["--seq_len=128", "--output_dir=preset_data"])
    result = run_script(folder, "--flagfile=configs/p.flags")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["build --flagfile=configs/p.data.flags --output_dir=preset_data",
                                          "train --flagfile=configs/p.flags"]
    # As absl reads them, a later flag wins: the directory train.py will read is the one built.
    result = run_script(folder, "--flagfile=configs/p.flags", "--data_dir=mine")
    assert result.stdout.splitlines()[0] == "build --flagfile=configs/p.data.flags --output_dir=mine"
    result = run_script(folder, "--data_dir=mine", "--flagfile=configs/p.flags")
    assert result.stdout.splitlines()[0] == "build --flagfile=configs/p.data.flags --output_dir=preset_data"
    (folder / "preset_data").mkdir()
    (folder / "preset_data" / "metadata.json").write_text("{}")
    assert run_script(folder, "--flagfile=configs/p.flags").stdout.splitlines() == ["train --flagfile=configs/p.flags"]


def test_a_flag_file_without_data_flags_builds_the_default_data_in_its_data_dir(tmp_path):
    folder = stub_repo(tmp_path)
    write_preset(folder, "q", ["--data_dir=q_data"])
    assert run_script(folder, "--flagfile=configs/q.flags").stdout.splitlines() == [
        "build --output_dir=q_data", "train --flagfile=configs/q.flags"]


def test_arguments_that_do_not_parse_are_left_to_train_py(tmp_path):
    result = run_script(stub_repo(tmp_path), "--epochs=many")
    assert result.stdout.splitlines() == ["train --epochs=many"]  # train.py names the flag; nothing is built.


def test_the_repositorys_presets_build_their_own_data(tmp_path):
    folder = stub_repo(tmp_path)
    shutil.copytree(REPO_ROOT / "configs", folder / "configs")
    result = run_script(folder, "--flagfile=configs/wt103_base.flags", "--epochs=1")
    assert result.stdout.splitlines() == ["build --flagfile=configs/wt103_base.data.flags --output_dir=data/wt103",
                                          "train --flagfile=configs/wt103_base.flags --epochs=1"]
