"""Scores a trained model on a whole split: token-level and word-level perplexity.

    python evaluate.py logs/base --split=test --mem_len=64

CHECKPOINT is a run directory (its latest checkpoint), a checkpoint prefix inside one
(logs/base/checkpoints/ckpt-2699) or an export directory (logs/base/export). --mem_len may be
longer than in training: relative positional attention has no learned positions.
"""
import json
import sys

import tensorflow as tf
from absl import app, flags

import data_utils
import train

FLAGS = flags.FLAGS
flags.DEFINE_enum("split", "valid", ["valid", "test"], "Split to score.")
flags.DEFINE_integer("mem_len", None, "Memory length at evaluation (default: the training one).", lower_bound=0)
flags.DEFINE_string("data_dir", None, "Dataset directory (default: the one the model was trained on).")
flags.DEFINE_enum("eval_mode", None, ["mix", "argmax"], "SuperNet only: mix candidates with pi, or take each argmax.")
flags.DEFINE_enum("jit_compile", "auto", ["on", "off", "auto"], "Compile the evaluation step with XLA (auto: on).")


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("Usage: python evaluate.py CHECKPOINT [--split=valid|test] [--mem_len=M]")
    overrides = {key: value for key, value in (("mem_len", FLAGS.mem_len), ("eval_mode", FLAGS.eval_mode))
                 if value is not None}
    try:
        model, record = train.load_model(argv[1], **overrides)
        data_dir = FLAGS.data_dir or record["data_dir"]
        data_utils.check_data_matches_model(data_dir, record)
    except ValueError as error:  # DataError included.
        sys.exit(f"evaluate.py: error: {data_utils.error_line(error)}")
    except (OSError, KeyError, TypeError, tf.errors.OpError) as error:  # A truncated or foreign file in the export.
        sys.exit(f"evaluate.py: error: cannot load {argv[1]}: {data_utils.error_line(error)}")
    metadata = data_utils.load_metadata(data_dir)
    results = train.evaluate(model, data_utils.make_dataset(data_dir, FLAGS.split),
                             metadata["splits"][FLAGS.split]["words"], metadata["batch_size"], FLAGS.jit_compile)
    print(json.dumps(dict(split=FLAGS.split, mem_len=model.config.mem_len, **results)))


if __name__ == "__main__":
    app.run(main)
