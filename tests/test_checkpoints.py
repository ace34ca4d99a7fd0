"""checkpoints.py: a trained model loads alike from its run, its checkpoints and its export; a checkpoint that
lacks a model variable is refused rather than loaded in part."""
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

import checkpoints


def weights(model):
    return [np.asarray(w) for w in model.get_weights()]


def test_a_model_loads_alike_from_its_run_checkpoint_best_and_export(trained_run, tmp_path):
    run_dir = shutil.copytree(trained_run.directory, tmp_path / "run")
    shutil.copytree(run_dir / "checkpoints", run_dir / "best_copy")
    shutil.move(run_dir / "best_copy", run_dir / "checkpoints" / "best")
    loaded = [checkpoints.load_model(path)[0] for path in (run_dir, run_dir / "checkpoints" / "ckpt-1",
                                                           run_dir / "checkpoints" / "best" / "ckpt-1", run_dir / "export")]
    for model in loaded[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(weights(model), weights(loaded[0])))
    longer, record = checkpoints.load_model(run_dir, mem_len=12)
    assert longer.config.mem_len == 12 and record["model"]["mem_len"] == 4


def test_a_checkpoint_that_lacks_a_model_variable_is_refused(trained_run, tmp_path):
    model, _ = checkpoints.load_model(trained_run.directory)
    prefix = tf.train.Checkpoint(model_variables=list(model.variables)[:-1]).save(str(tmp_path / "checkpoints" / "ckpt"))
    (tmp_path / "config.json").write_bytes(trained_run.config_path.read_bytes())
    with pytest.raises(checkpoints.IncompleteCheckpointError, match=re.escape(f"{prefix}: lacks variables")):
        checkpoints.load_model(prefix)
