"""A run directory: its config record, its checkpoints, its export, and loading a trained model from it.

    logs/<model_name>/config.json      the ModelConfig, TrainConfig and dataset a run was made with
    logs/<model_name>/checkpoints/     ckpt-N (the latest two) and best/
    logs/<model_name>/export/          config.json, model.weights.h5 and the tokenizer
"""
import contextlib
import dataclasses
import json
import pathlib
import shutil
import sys

import tensorflow as tf

import data_utils
from devices import dtype_policy
from model import ModelConfig, TransformerXL

# Fields that config.json files of runs made before their removal record, with the one value they may hold
# (None: any value; eval_mode is now a call argument).
RETIRED_FIELDS = {"model": {"pad_id": data_utils.PAD_ID, "eval_mode": None},
                  "train": {"opt_name": "adam", "weight_decay": 0.0}}
# Fields added since, with the value that runs made before them had in effect.
ADDED_FIELDS = {"train": {"arch_schedule": "constant"}}


class CheckpointError(RuntimeError):
    """No checkpoint of a run can be read; the message names them."""


def read_record(path):
    """A config.json in today's fields: retired ones dropped (refused if they held another value than
    the one still supported), added ones filled with the value older runs had in effect."""
    record = json.loads(pathlib.Path(path).read_text())
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


def check_or_save_config(run_dir, record, save=True):
    """Saves the run's config beside its checkpoints (unless not `save`); refuses to resume a run made with another.

    The dataset is compared by content (its build settings and sources), not by its path. The file is
    written whole under another name and then renamed, so other workers never read half of it.
    """
    path = run_dir / "config.json"
    record = json.loads(json.dumps(record))  # Tuples become lists, as they do on disk.
    if not path.is_file():
        if save:
            path.with_suffix(".json.tmp").write_text(json.dumps(record, indent=1))
            path.with_suffix(".json.tmp").replace(path)
        return
    saved = read_record(path)
    changed = [f"{part}.{key}: {saved.get(part, {}).get(key)} -> {value}"
               for part in ("model", "train", "data") for key, value in record[part].items()
               if saved.get(part, {}).get(key) != value]
    if changed:
        raise ValueError(f"{run_dir} holds a run with another config ({'; '.join(changed)}); "
                         f"use another --model_name, or delete {run_dir} to start over.")


def checkpoint_paths(checkpoint_dir):
    """The checkpoint prefixes in a directory, newest first, read from their index files, not from
    the `checkpoint` state file, which a kill may leave stale or damaged."""
    indexes = pathlib.Path(checkpoint_dir).glob("ckpt-*.index")
    numbered = [(int(path.stem.split("-")[1]), path.with_suffix("")) for path in indexes if path.stem[5:].isdigit()]
    return [str(prefix) for _, prefix in sorted(numbered, reverse=True)]


def restore_readable_checkpoint(checkpoint, checkpoint_dir, log, chief=True):
    """Restores the newest checkpoint that reads whole and returns its prefix, or None if there is none.

    Newer ones that do not read (truncated, corrupted) are named in a warning and, by the chief, set
    aside as damaged-ckpt-N.* with the restored one made the latest, so that the rotation of saves
    never deletes a good checkpoint in their favour. Raises CheckpointError when none reads.
    """
    unreadable, errors = [], []
    for prefix in checkpoint_paths(checkpoint_dir):
        try:
            checkpoint.restore(prefix).assert_existing_objects_matched()
        except (tf.errors.OpError, OSError, ValueError, IndexError, AssertionError) as error:  # Each seen on damage.
            unreadable.append(prefix)
            errors.append(f"{prefix} ({data_utils.error_line(error)})")
            continue
        if unreadable:
            log.warning("Could not read %s; resuming from %s instead, the others set aside as damaged-*.",
                        "; ".join(errors), prefix)
            if chief:
                set_aside_damaged(unreadable, checkpoint_dir, prefix)
        return prefix
    if unreadable:
        raise CheckpointError(f"No checkpoint in {checkpoint_dir} can be read: {'; '.join(errors)}. Move them "
                              f"away to start the run over.")
    return None


def set_aside_damaged(prefixes, checkpoint_dir, restored):
    """Renames each damaged checkpoint's files to damaged-<name> and makes `restored` the latest."""
    for prefix in map(pathlib.Path, prefixes):
        for path in prefix.parent.glob(prefix.name + ".*"):
            path.rename(path.with_name("damaged-" + path.name))
    tf.compat.v1.train.update_checkpoint_state(str(checkpoint_dir), restored,
                                               all_model_checkpoint_paths=checkpoint_paths(checkpoint_dir)[::-1])


def remove_unfinished_saves(checkpoint_dir):
    """Deletes the ckpt-N_temp folders that a save killed midway leaves in the run's checkpoint folders."""
    for directory in (pathlib.Path(checkpoint_dir), pathlib.Path(checkpoint_dir) / "best"):
        for unfinished in directory.glob("ckpt-*_temp"):
            if unfinished.is_dir():
                shutil.rmtree(unfinished)


def export(model, run_dir, data_dir):
    """Writes run_dir/export: the run's config, the weights and the tokenizer, all that
    evaluate.py and generate.py need."""
    directory = run_dir / "export"
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "config.json", directory / "config.json")
    model.save_weights(str(directory / "model.weights.h5"))
    for name in (data_utils.METADATA_FILE, data_utils.TOKENIZER_FILE):
        if (pathlib.Path(data_dir) / name).is_file():  # Synthetic datasets have no tokenizer.
            shutil.copyfile(pathlib.Path(data_dir) / name, directory / name)


def build_model(model_config, precision="float32"):
    """A TransformerXL with its weights created, computing in `precision` (as trained: bfloat16 scores differ)."""
    model = TransformerXL(model_config, dtype=dtype_policy(precision))
    model(tf.zeros([1, 1], tf.int32), model.initial_memory(1))  # Creates the weights.
    return model


@contextlib.contextmanager
def load_errors_in_one_line(script, path):
    """Ends `script` with one line on a bad setting or data (ValueError, DataError included) or on a
    truncated or foreign file in the run or export at `path`, instead of a traceback."""
    try:
        yield
    except ValueError as error:
        sys.exit(f"{script}: error: {data_utils.error_line(error)}")
    except (OSError, KeyError, TypeError, tf.errors.OpError) as error:
        sys.exit(f"{script}: error: cannot load {path}: {data_utils.error_line(error)}")


def load_model(path, mem_len=None):
    """Rebuilds a trained model from an export directory, a run directory or a checkpoint prefix.

    mem_len: a memory length other than the training one (it holds no weights), e.g. a longer one
    for evaluation; None keeps the training one.
    Returns (model, the run's config record, whose "data_dir" is the dataset it was trained on).
    """
    path = pathlib.Path(path)
    # The folder itself (a run or an export), or the run above checkpoints/ckpt-N or checkpoints/best/ckpt-N.
    run_dir = next((folder for folder in (path, path.parent.parent, path.parent.parent.parent)
                    if (folder / "config.json").is_file()), None)
    if run_dir is None:
        raise ValueError(f"{path}: neither an export directory, a run directory nor a checkpoint in one.")
    record = read_record(run_dir / "config.json")
    overrides = {} if mem_len is None else {"mem_len": mem_len}
    model = build_model(ModelConfig(**{**record["model"], **overrides}), record["train"]["precision"])
    if (path / "model.weights.h5").is_file():
        model.load_weights(str(path / "model.weights.h5"))
        return model, record
    checkpoint = tf.train.latest_checkpoint(run_dir / "checkpoints") if path == run_dir else str(path)
    if checkpoint is None:
        raise ValueError(f"{run_dir}: no checkpoint yet.")
    tf.train.Checkpoint(model_variables=list(model.variables)).restore(checkpoint).expect_partial()
    return model, record
