"""Times the original implementation's SuperNet training step and this project's, side by side on this machine.

    python3 compare_original.py PATH [--steps=60] [--output=compare_original.json]

PATH is a checkout or a git directory of the original, Jmkernes/PAR-Transformer-XL: its par_model.py
and adaptive_softmax.py are used, never copied into this repository. Both implementations run
CONFIGURATION below, the original's default model as its README gives it (d_ffn 1024; its
base_model.sh says 512) and train.py's defaults, on a Zipf token stream (bench.zipf_stream), in one
session and this order: the original's step, `bench.py --architectures=supernet` (float32 and
bfloat16), the original's step again. Each figure is a median of --steps timed steps after warm-up.
A precision's speed-up is the mean of the original's two medians over this project's median; a
machine that slows during the session shows as a gap between the original's two.

The original needs Keras 2: it runs in a virtual environment of its own (--venv, built on the first
run with pip: tensorflow and tf-keras 2.21), this project with the python3 that runs this script.
The JSON record carries bench.py's provenance (this project's commit, the date, the CPU and its
bfloat16 instructions, TensorFlow, the precisions) and the original's commit and versions.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags

REPO_ROOT = pathlib.Path(__file__).resolve().parent
ORIGINAL = "Jmkernes/PAR-Transformer-XL"
ORIGINAL_FILES = ("par_model.py", "adaptive_softmax.py")
ORIGINAL_PACKAGES = ("tensorflow==2.21.*", "tf-keras==2.21.*")
ORIGINAL_WARMUP_STEPS = 10  # Untimed steps first: tracing and the first executions.
ORIGINAL_MAX_POSITION = 512  # The original's positional table; it must cover seq_len + mem_len.

# The one configuration both implementations run, in the flag names of this project's bench.py.
CONFIGURATION = dict(batch_size=32, seq_len=32, vocab_size=12000, d_model=128, num_heads=4, d_ffn=1024, num_layers=6,
                     mem_len=16, cutoffs=(250, 2500), dropout_rate=0.1)


def original_sources(path, destination):
    """Writes the original's model files from a checkout or a git directory into destination; returns its commit.

    A checkout's files are taken as they are on disk; a git directory's (bare, or a checkout's .git) at HEAD.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory; expected a checkout or git directory of {ORIGINAL}.")

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout

    try:
        if all((path / name).is_file() for name in ORIGINAL_FILES):
            for name in ORIGINAL_FILES:
                shutil.copy(path / name, destination / name)
            return git("-C", str(path), "rev-parse", "HEAD").strip() if (path / ".git").exists() else None
        for name in ORIGINAL_FILES:
            (destination / name).write_text(git("--git-dir", str(path), "show", f"HEAD:{name}"))
        return git("--git-dir", str(path), "rev-parse", "HEAD").strip()
    except (OSError, subprocess.CalledProcessError):
        raise ValueError(f"{path}: neither a checkout nor a git directory of {ORIGINAL} "
                         f"(expected {' and '.join(ORIGINAL_FILES)} in it or at its HEAD).") from None


def original_python(venv):
    """The python of a virtual environment with the original's packages, created at `venv` if missing."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"Building the original's virtual environment in {venv} ({', '.join(ORIGINAL_PACKAGES)})")
        if subprocess.run([sys.executable, "-m", "venv", str(venv)]).returncode:
            sys.exit(f"compare_original.py: error: could not create a virtual environment in {venv} (see above).")
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", *ORIGINAL_PACKAGES], capture_output=True, text=True)
    if pip.returncode:
        sys.exit(f"compare_original.py: error: pip could not install {' '.join(ORIGINAL_PACKAGES)} into {venv}:\n"
                 f"{pip.stderr[-3000:]}")
    return python


def time_original_step(source_dir, tokens_file, steps):
    """Prints the original's median training step as one JSON line. Runs in the original's virtual environment.

    Its step is the one of its train.py: the model's loss under a GradientTape, then Adam, in one tf.function.
    """
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.keras is then tf-keras (Keras 2), which the original is written for.
    import importlib.metadata
    import time

    import tensorflow as tf

    sys.path.insert(0, str(source_dir))
    from par_model import PARTransformerXL

    config = CONFIGURATION
    model = PARTransformerXL(d_model=config["d_model"], num_heads=config["num_heads"], max_position=ORIGINAL_MAX_POSITION,
                             d_ffn=config["d_ffn"], num_layers=config["num_layers"], mem_len=config["mem_len"],
                             vocab_size=config["vocab_size"], dropout_rate=config["dropout_rate"],
                             cutoffs=[*config["cutoffs"], config["vocab_size"]])
    optimizer = tf.keras.optimizers.Adam(1e-4)
    tau = tf.Variable(1.0)

    @tf.function
    def train_step(inputs, targets, memories):
        with tf.GradientTape() as tape:
            loss, new_memories = model(inputs, memories, labels=targets, tau=tau, training=True)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss, new_memories

    batch_size, seq_len = config["batch_size"], config["seq_len"]
    segments = np.load(tokens_file).reshape(-1, batch_size, seq_len + 1)  # [steps, B, T + 1]: targets shifted by one.
    memories = [tf.zeros((batch_size, config["mem_len"], config["d_model"])) for _ in range(config["num_layers"])]
    seconds = []
    for step, segment in enumerate(segments):
        inputs, targets = tf.constant(segment[:, :-1]), tf.constant(segment[:, 1:])
        start = time.perf_counter()
        loss, memories = train_step(inputs, targets, memories)
        loss.numpy()
        if step >= ORIGINAL_WARMUP_STEPS:
            seconds.append(time.perf_counter() - start)
    print(json.dumps(dict(train_ms_per_step=1000 * float(np.median(seconds)), tensorflow=tf.__version__,
                          tf_keras=importlib.metadata.version("tf-keras"))))


def run_original(python, source_dir, tokens_file, steps):
    """The original's timing, from its virtual environment, in source_dir so that its adaptive_softmax.py is found."""
    code = f"import compare_original; compare_original.time_original_step({str(source_dir)!r}, {str(tokens_file)!r}, {steps})"
    result = subprocess.run([str(python), "-c", code], cwd=source_dir, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"})
    if result.returncode != 0:
        sys.exit(f"compare_original.py: error: the original's step failed:\n{result.stderr[-3000:]}")
    timing = json.loads(result.stdout.splitlines()[-1])
    print(f"original: {timing['train_ms_per_step']:.1f} ms a training step")
    return timing


def bench_flags(steps, output):
    values = {name: ",".join(map(str, value)) if isinstance(value, tuple) else value
              for name, value in CONFIGURATION.items()}
    return ["--architectures=supernet", f"--steps={steps}", f"--output={output}",
            *(f"--{name}={value}" for name, value in values.items())]


def comparison(original_commit, original_timings, bench_report):
    """The record: bench.py's provenance, the original's two timings, this project's and each precision's speed-up."""
    original_ms = [timing["train_ms_per_step"] for timing in original_timings]
    mean_original_ms = sum(original_ms) / len(original_ms)
    tokens = CONFIGURATION["batch_size"] * CONFIGURATION["seq_len"]
    project = [{key: result[key] for key in ("precision", "train_ms_per_step", "train_tokens_per_second", "train_mfu",
                                             "eval_ms_per_step")}
               for result in bench_report["results"] if result["architecture"] == "supernet"]
    return dict(
        provenance=bench_report["provenance"], command=sys.argv, configuration=CONFIGURATION,
        steps=bench_report["steps"], matmul_peak_flops=bench_report["matmul_peak_flops"],
        original=dict(repository=ORIGINAL, commit=original_commit, tensorflow=original_timings[0]["tensorflow"],
                      tf_keras=original_timings[0]["tf_keras"], train_ms_per_step=original_ms,
                      train_tokens_per_second=[1000 * tokens / ms for ms in original_ms]),
        project=project,
        speed_up={result["precision"]: mean_original_ms / result["train_ms_per_step"] for result in project},
    )


def print_record(record):
    original = record["original"]
    print(f"{'implementation':>14} {'precision':>9} {'train ms':>9} {'train tok/s':>12} {'train MFU':>9} "
          f"{'eval ms':>8} {'speed-up':>8}")
    for ms, tokens_per_second in zip(original["train_ms_per_step"], original["train_tokens_per_second"]):
        print(f"{'original':>14} {'float32':>9} {ms:9.1f} {tokens_per_second:12,.0f}")
    for result in record["project"]:
        print(f"{'this project':>14} {result['precision']:>9} {result['train_ms_per_step']:9.1f} "
              f"{result['train_tokens_per_second']:12,.0f} {result['train_mfu']:9.2f} {result['eval_ms_per_step']:8.1f} "
              f"{record['speed_up'][result['precision']]:7.2f}x")


def main(argv):
    if len(argv) != 2:
        sys.exit(f"compare_original.py: error: expected one argument, the path of a checkout or git directory of "
                 f"{ORIGINAL}; got {len(argv) - 1}.")
    if FLAGS.steps < 1:
        sys.exit(f"compare_original.py: error: --steps={FLAGS.steps}: must be at least 1.")
    with tempfile.TemporaryDirectory(prefix="compare_original_") as work:
        work = pathlib.Path(work)
        try:
            original_commit = original_sources(argv[1], work)
        except ValueError as error:
            sys.exit(f"compare_original.py: error: {error}")
        python = original_python(pathlib.Path(FLAGS.venv).expanduser())
        import bench  # Here, not at the top: the original's environment imports this file, and cannot import bench.
        tokens_file = work / "tokens.npy"
        num_tokens = (ORIGINAL_WARMUP_STEPS + FLAGS.steps) * CONFIGURATION["batch_size"] * (CONFIGURATION["seq_len"] + 1)
        np.save(tokens_file, bench.zipf_stream(num_tokens, CONFIGURATION["vocab_size"]))
        timings = [run_original(python, work, tokens_file, FLAGS.steps)]
        if subprocess.run([sys.executable, "bench.py", *bench_flags(FLAGS.steps, work / "bench.json")],
                          cwd=REPO_ROOT).returncode:
            sys.exit("compare_original.py: error: bench.py failed (see above).")
        timings.append(run_original(python, work, tokens_file, FLAGS.steps))
        record = comparison(original_commit, timings, json.loads((work / "bench.json").read_text()))
    print_record(record)
    pathlib.Path(FLAGS.output).write_text(json.dumps(record, indent=1) + "\n")
    print(f"Wrote {FLAGS.output}")


def define_flags():
    flags.DEFINE_integer("steps", 60, "Timed steps per median, for the original and for bench.py.")
    flags.DEFINE_string("venv", os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "par-original-venv"),
                        "The original's virtual environment; built there on the first run.")
    flags.DEFINE_string("output", "compare_original.json", "Where the JSON record goes.")
    return flags.FLAGS


if __name__ == "__main__":
    FLAGS = define_flags()
    app.run(main)
