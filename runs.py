"""A run directory and every file in it; the one place that spells a path inside a run.

    logs/<model_name>/config.json           the ModelConfig, TrainConfig and dataset the run was made with
    logs/<model_name>/training_log.log      the console log
    logs/<model_name>/train/, valid/        TensorBoard events
    logs/<model_name>/checkpoints/          ckpt-N (the latest two), best/ckpt-N and best/best_valid.json
    logs/<model_name>/pi_history.jsonl      a SuperNet's pi at every logged step
    logs/<model_name>/pi.gif, pi.png        its animation and last frame (plot_arch.py)
    logs/<model_name>/results.json          the final validation and test scores
    logs/<model_name>/export/               config.json, model.weights.h5, the tokenizer, and a SavedModel (export.py)
    logs/<model_name>/train.lock            held by the one process training in it (reliability.RunLock)

Imports no TensorFlow, so that plot_arch.py reads a run without it; saving and restoring the
model's checkpoints is checkpoints.py's.
"""
import dataclasses
import json
import logging
import pathlib
import sys

import reliability
from reliability import read_json

# Fields that config.json files of runs made before their removal record, with the one value they may hold
# (None: any value; eval_mode is now a call argument; pad_id was the data's padding id, 0).
RETIRED_FIELDS = {"model": {"pad_id": 0, "eval_mode": None},
                  "train": {"opt_name": "adam", "weight_decay": 0.0}}
# Fields added since, with the value that runs made before them had in effect.
ADDED_FIELDS = {"model": {"single_path": False},
                "train": {"arch_schedule": "constant", "arch_freeze_steps": 0, "arch_holdout": 0.0, "cost_weight": 0.0,
                          "cost_source": "flops", "cost_table": [], "cost_mem_len": -1}}

EXPORT_WEIGHTS = "model.weights.h5"  # Beside the config.json (and tokenizer) of an export directory.


def read_record(path):
    """A config.json in today's fields: retired ones dropped (refused if they held another value than
    the one still supported), added ones filled with the value older runs had in effect."""
    record = read_json(path)
    for part, fields in RETIRED_FIELDS.items():
        for name, only_value in fields.items():
            value = record.get(part, {}).pop(name, only_value)
            if only_value is not None and value != only_value:
                raise ValueError(f"{path}: {part}.{name}={value!r}, which this version no longer supports "
                                 f"(only {only_value!r}).")
    for part, fields in ADDED_FIELDS.items():
        for name, value in fields.items():
            record.setdefault(part, {}).setdefault(name, value)
    return record


def config_record(model_config, config, data_dir, metadata):
    """What config.json records: the model, the training settings and the dataset's build."""
    return dict(model=dataclasses.asdict(model_config), train=dataclasses.asdict(config),
                data=dict(vocab_size=metadata["vocab_size"], batch_size=metadata["batch_size"],
                          seq_len=metadata["seq_len"], source=metadata["settings"]),
                data_dir=str(pathlib.Path(data_dir).resolve()))


class Run:
    """logs/<model_name>/: the paths of a run's files, and reading and writing its small records."""

    def __init__(self, directory):
        self.directory = pathlib.Path(directory)
        self.config_path = self.directory / "config.json"
        self.log_path = self.directory / "training_log.log"
        self.checkpoint_dir = self.directory / "checkpoints"
        self.best_dir = self.checkpoint_dir / "best"
        self.best_path = self.best_dir / "best_valid.json"
        self.pi_history_path = self.directory / "pi_history.jsonl"
        self.pi_gif_path = self.directory / "pi.gif"
        self.pi_png_path = self.directory / "pi.png"
        self.results_path = self.directory / "results.json"
        self.export_dir = self.directory / "export"

    def __repr__(self):
        return f"Run({str(self.directory)!r})"

    def events_dir(self, name):
        """TensorBoard's folder for the "train" or "valid" events."""
        return self.directory / name

    def worker_checkpoint_dir(self, task_id):
        """Where a multi-worker run's non-chief worker `task_id` saves, under a folder it deletes after each save."""
        return self.directory / f"workertemp_{task_id}" / "checkpoints"

    @classmethod
    def holding(cls, path):
        """The run that `path` is or lies in: the run directory itself, or the run two or three levels
        above checkpoints/ckpt-N or checkpoints/best/ckpt-N; None if there is none."""
        path = pathlib.Path(path)
        for folder in (path, path.parent.parent, path.parent.parent.parent):
            if (folder / "config.json").is_file():
                return cls(folder)
        return None

    # The config record.

    def read_config(self):
        return read_record(self.config_path)

    def check_or_save_config(self, record, save=True):
        """Saves the run's config (unless not `save`); refuses to resume a run made with another.

        The dataset is compared by content (its build settings and sources), not by its path. The file is
        written whole under another name and then renamed, so other workers never read half of it.
        """
        record = json.loads(json.dumps(record))  # Tuples become lists, as they do on disk.
        if not self.config_path.is_file():
            if save:
                reliability.write_json(self.config_path, record, indent=1)
            return
        saved = self.read_config()
        changed = [f"{part}.{key}: {saved.get(part, {}).get(key)} -> {value}"
                   for part in ("model", "train", "data") for key, value in record[part].items()
                   if saved.get(part, {}).get(key) != value]
        if changed:
            raise ValueError(f"{self.directory} holds a run with another config ({'; '.join(changed)}); "
                             f"use another --model_name, or delete {self.directory} to start over.")

    # The best validation so far, saved beside its checkpoint.

    def best_loss(self):
        """The lowest validation loss saved as best so far, inf if none."""
        return read_json(self.best_path)["loss"] if self.best_path.is_file() else float("inf")

    def write_best(self, step, validation):
        reliability.write_json(self.best_path, dict(step=step, **validation))

    # The pi history: one JSON line per logged step of a SuperNet.

    def append_pi(self, step, tau, pi):
        reliability.append_line(self.pi_history_path, json.dumps(dict(step=step, tau=tau, pi=pi)))  # Whole, even on a full disk.

    def read_pi_history(self):
        if not self.pi_history_path.is_file():
            raise FileNotFoundError(f"{self.pi_history_path}: no pi history; is {self.directory} the run "
                                    f"directory of a SuperNet?")
        return reliability.read_json_lines(self.pi_history_path)

    def pi_history_or_empty(self):
        return self.read_pi_history() if self.pi_history_path.is_file() else []

    def forget_pi_after(self, step):
        """Drops pi records a killed run wrote after its last checkpoint; the resumed run writes them again."""
        if self.pi_history_path.is_file():
            kept = [record for record in self.read_pi_history() if record["step"] <= step]
            reliability.write_whole(self.pi_history_path, "".join(json.dumps(record) + "\n" for record in kept))

    def write_results(self, results):
        reliability.write_json(self.results_path, results, indent=1)


def make_logger(run, to_file=True):
    """Logs to the console and (if `to_file`) to the run's training_log.log."""
    logger = logging.getLogger(f"train.{run.directory}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        console = logging.StreamHandler(sys.stdout)
        # On a terminal the progress bar holds the current line: clear it, and the bar redraws below.
        console.setFormatter(logging.Formatter(("\r\x1b[K" if sys.stdout.isatty() else "") + "%(asctime)s %(message)s"))
        logger.addHandler(console)
        if to_file:
            file = reliability.LogFile(run.log_path)  # Stops at a full disk instead of a traceback a line.
            file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            logger.addHandler(file)
    return logger
