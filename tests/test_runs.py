"""runs.py: every file of a run under one folder, the config record (old ones too), the pi history, the best
record, and JSON files named when they do not parse."""
import json

import pytest

import runs
from config import ModelConfig, TrainConfig

METADATA = dict(vocab_size=40, batch_size=4, seq_len=8, settings=dict(source="synthetic"))


def record(**train):
    return runs.config_record(ModelConfig(vocab_size=40, cutoffs=()), TrainConfig(**train), "data", METADATA)


def test_every_path_of_a_run_lies_in_its_folder_and_none_twice(tmp_path):
    run = runs.Run(tmp_path / "base")
    paths = [run.config_path, run.log_path, run.checkpoint_dir, run.best_dir, run.best_path, run.pi_history_path,
             run.pi_gif_path, run.pi_png_path, run.results_path, run.export_dir, run.events_dir("train"),
             run.events_dir("valid"), run.worker_checkpoint_dir(1)]
    assert len(set(paths)) == len(paths)
    assert all(run.directory in path.parents for path in paths)


def test_a_run_is_found_from_its_folder_its_checkpoints_and_its_export(tmp_path):
    run = runs.Run(tmp_path / "base")
    run.directory.mkdir()
    run.check_or_save_config(record())
    for inside in (run.directory, run.checkpoint_dir / "ckpt-5", run.best_dir / "ckpt-5"):
        assert runs.Run.holding(inside).directory == run.directory
    assert runs.Run.holding(tmp_path) is None


def test_a_config_is_saved_once_and_another_is_refused_naming_the_fields(tmp_path):
    run = runs.Run(tmp_path)
    run.check_or_save_config(record(), save=False)
    assert not run.config_path.exists()
    run.check_or_save_config(record())
    run.check_or_save_config(record())  # The same config resumes.
    with pytest.raises(ValueError, match=r"train.max_lr: 0.0001 -> 0.002.*another --model_name"):
        run.check_or_save_config(record(max_lr=2e-3))
    assert not list(tmp_path.glob("*.tmp"))


def test_a_config_written_before_fields_were_retired_or_added_reads_in_todays_fields(tmp_path):
    run = runs.Run(tmp_path)
    old = record()
    old["model"].update(eval_mode="argmax", pad_id=0)  # As runs recorded them until these fields were retired.
    old["train"].update(opt_name="adam", weight_decay=0.0)
    del old["train"]["arch_schedule"]  # Added since: older runs had the constant schedule in effect.
    run.config_path.write_text(json.dumps(old))
    loaded = run.read_config()
    assert "eval_mode" not in loaded["model"] and "opt_name" not in loaded["train"]
    assert loaded["train"]["arch_schedule"] == "constant"
    run.check_or_save_config(record())  # Resuming with today's record is not refused.
    old["model"]["pad_id"] = 3
    run.config_path.write_text(json.dumps(old))
    with pytest.raises(ValueError, match="model.pad_id=3"):
        run.read_config()


def test_the_pi_history_appends_reads_and_forgets_what_a_killed_run_wrote_after_its_checkpoint(tmp_path):
    run = runs.Run(tmp_path)
    assert run.pi_history_or_empty() == []
    with pytest.raises(FileNotFoundError, match="no pi history"):
        run.read_pi_history()
    for step in (100, 200, 300):
        run.append_pi(step, 1.0 / step, [[0.5, 0.25, 0.25]])
    assert [r["step"] for r in run.read_pi_history()] == [100, 200, 300]
    run.forget_pi_after(250)
    assert run.read_pi_history() == [dict(step=100, tau=0.01, pi=[[0.5, 0.25, 0.25]]),
                                     dict(step=200, tau=0.005, pi=[[0.5, 0.25, 0.25]])]


def test_the_best_record_starts_at_infinity_and_keeps_the_step(tmp_path):
    run = runs.Run(tmp_path)
    assert run.best_loss() == float("inf")
    run.best_dir.mkdir(parents=True)
    run.write_best(37, dict(loss=4.5, perplexity=90.0))
    assert run.best_loss() == 4.5 and runs.read_json(run.best_path) == dict(step=37, loss=4.5, perplexity=90.0)
