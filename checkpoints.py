"""A run's model on disk: its checkpoints (saved, restored, set aside when damaged), its export,
and loading a trained model back from either. Paths come from runs.Run.
"""
import contextlib
import pathlib
import shutil
import sys

import tensorflow as tf

import data_utils
import reliability
from config import METADATA_FILE, TOKENIZER_FILE, ModelConfig
from devices import dtype_policy
from export import write_saved_model
from model import TransformerXL
from runs import EXPORT_WEIGHTS, Run

KEEP_LATEST = 2  # Checkpoints kept besides the best: the newest, and one to fall back on if it is damaged.


class CheckpointError(RuntimeError):
    """No checkpoint of a run can be read; the message names them."""


class IncompleteCheckpointError(ValueError):
    """A checkpoint that lacks some of the model's variables; the message names it."""


def checkpoint_paths(checkpoint_dir):
    """The checkpoint prefixes in a directory, newest first, read from their index files, not from
    the `checkpoint` state file, which a kill may leave stale or damaged."""
    indexes = pathlib.Path(checkpoint_dir).glob("ckpt-*.index")
    numbered = [(int(path.stem.split("-")[1]), path.with_suffix("")) for path in indexes if path.stem[5:].isdigit()]
    return [str(prefix) for _, prefix in sorted(numbered, reverse=True)]


def managers(checkpoint, write_dir):
    """(the latest checkpoints' manager, the best one's) saving `checkpoint` into write_dir and write_dir/best."""
    return (tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=KEEP_LATEST),
            tf.train.CheckpointManager(checkpoint, pathlib.Path(write_dir) / "best", max_to_keep=1))


def save_checkpoint(manager, number):
    """manager.save(checkpoint_number=number); on a full disk, a DiskFullError naming the checkpoint, with the
    unfinished save's ckpt-N_temp folder removed. The older checkpoints stay as they were: the manager
    deletes the oldest only after a save succeeds."""
    prefix = pathlib.Path(manager.directory) / f"ckpt-{number}"
    try:
        return manager.save(checkpoint_number=number)
    except (OSError, tf.errors.ResourceExhaustedError) as error:
        if reliability.disk_full_path(error) is None:
            raise
        shutil.rmtree(f"{prefix}_temp", ignore_errors=True)
        raise reliability.DiskFullError(prefix) from None


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


def remove_unfinished_saves(run):
    """Deletes the ckpt-N_temp folders that a save killed midway leaves in the run's checkpoint folders."""
    for directory in (run.checkpoint_dir, run.best_dir):
        for unfinished in directory.glob("ckpt-*_temp"):
            if unfinished.is_dir():
                shutil.rmtree(unfinished)


def export(model, run, data_dir, eval_mode="mix"):
    """Writes the run's export: its config, the weights and the tokenizer, all that evaluate.py and
    generate.py need, and with them a SavedModel that takes and gives text and loads without this
    code (export.py), a SuperNet in eval_mode. It replaces the old export only once complete."""
    with reliability.written_whole(run.export_dir) as directory:
        shutil.copyfile(run.config_path, directory / run.config_path.name)
        model.save_weights(str(directory / EXPORT_WEIGHTS))
        for name in (METADATA_FILE, TOKENIZER_FILE):
            if (pathlib.Path(data_dir) / name).is_file():
                shutil.copyfile(pathlib.Path(data_dir) / name, directory / name)
        if "tokenizer" in data_utils.load_metadata(directory):  # Synthetic datasets have none, so no text.
            write_saved_model(model, data_utils.load_tokenizer(directory), run.read_config()["data"]["seq_len"],
                              directory, eval_mode)


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
    except (OSError, KeyError, TypeError, AssertionError, tf.errors.OpError) as error:
        sys.exit(f"{script}: error: cannot load {path}: {data_utils.error_line(error)}")


def load_model(path, mem_len=None, clamp_len=None):
    """Rebuilds a trained model from an export directory, a run directory (its latest checkpoint) or a
    checkpoint prefix inside one. A checkpoint that lacks any of the model's variables is refused.

    mem_len, clamp_len: a memory length or clamp other than the training one (neither holds weights),
    e.g. a longer memory for evaluation; None keeps the training one.
    Returns (model, the run's config record, whose "data_dir" is the dataset it was trained on).
    """
    path = pathlib.Path(path)
    run = Run.holding(path)
    if run is None:
        raise ValueError(f"{path}: neither an export directory, a run directory nor a checkpoint in one.")
    record = run.read_config()
    overrides = {name: value for name, value in dict(mem_len=mem_len, clamp_len=clamp_len).items() if value is not None}
    model = build_model(ModelConfig(**{**record["model"], **overrides}), record["train"]["precision"])
    if (path / EXPORT_WEIGHTS).is_file():
        model.load_weights(str(path / EXPORT_WEIGHTS))
        return model, record
    checkpoint = tf.train.latest_checkpoint(run.checkpoint_dir) if path == run.directory else str(path)
    if checkpoint is None:
        raise ValueError(f"{run.directory}: no checkpoint yet.")
    # The optimizers' state is left unread; every model variable must be found.
    status = tf.train.Checkpoint(model_variables=list(model.variables)).restore(checkpoint).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError:
        raise IncompleteCheckpointError(f"{checkpoint}: lacks variables of the model that {run.config_path} "
                                        f"describes; it was saved from another model.") from None
    return model, record
