"""What runs where: CPU threads, XLA, the compute precision and the tf.distribute strategy.

Every choice that depends on the hardware is made here, so that the trainer, evaluate.py and
bench.py make it alike, and the training step itself reads as single-device code.
"""
import functools
import pathlib
import platform

import tensorflow as tf

from config import check_choice


def set_intra_op_threads(threads):
    """Threads each TensorFlow op may use; must run before TensorFlow's first op.

    The SuperNet step is thousands of small ops: on 2 CPU cores, one thread per op with the
    executor running independent ops side by side beats splitting each op across cores
    (bench.py, bfloat16 SuperNet: 109 ms a step against 133 ms).
    """
    tf.config.threading.set_intra_op_parallelism_threads(threads)


def intra_op_threads():
    """The threads each op may use, as a benchmark records them: a number, or TensorFlow's default."""
    return tf.config.threading.get_intra_op_parallelism_threads() or "default (all cores)"


def accelerated():
    """Whether a GPU or TPU is attached."""
    return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))


def use_xla(jit_compile):
    """Whether the training and evaluation steps compile with XLA.

    auto: only on a GPU or TPU. On a CPU the uncompiled steps are faster: TensorFlow's executor
    runs a SuperNet block's independent candidates on separate cores where XLA:CPU runs them one
    after the other, XLA:CPU's bfloat16 matmuls do not use the AMX units oneDNN uses, and without
    XLA the adaptive softmax tails can score only their own tokens.
    """
    if check_choice("jit_compile", jit_compile) != "auto":
        return jit_compile == "on"
    return accelerated()


POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}  # Every precision but auto.


def dtype_policy(precision):
    """The Keras dtype policy of a --precision, "auto" resolved for this machine."""
    return POLICIES[resolve_precision(precision)[0]]


def cpuinfo(field):
    """The first value of `field` ("model name", "flags") in /proc/cpuinfo, or "" where there is none."""
    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == field), "")


def cpu_model():
    return cpuinfo("model name") or platform.processor() or "CPU"


def cpu_bfloat16_features():
    """The CPU's instructions for bfloat16 arithmetic that oneDNN uses, as /proc/cpuinfo names them."""
    return [flag for flag in ("avx512_bf16", "amx_bf16") if flag in cpuinfo("flags").split()]


def native_bfloat16():
    """Why this machine computes in bfloat16 natively (a TPU, a GPU of compute capability 8.0 or
    more, a CPU with AVX512_BF16 or AMX), or None where it would only emulate it."""
    if tf.config.list_physical_devices("TPU"):
        return "TPU"
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        major, minor = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
        return f"GPU of compute capability {major}.{minor}" if major >= 8 else None
    found = cpu_bfloat16_features()
    return f"CPU with {' and '.join(found)}" if found else None


def resolve_precision(precision, strategy="default"):
    """--precision=auto: (bfloat16 where the hardware runs it natively, else float32, and why); others as given.

    Under --strategy=multi_worker on CPUs, whose collectives take no bfloat16 variables, auto takes float32
    and an explicit bfloat16 is refused.
    """
    cpu_collectives = strategy == "multi_worker" and not accelerated()
    if check_choice("precision", precision) != "auto":
        if precision == "bfloat16" and cpu_collectives:
            raise ValueError("--strategy=multi_worker with bfloat16 on CPUs: TensorFlow's CPU collectives take no "
                             "bfloat16 variables; pass --precision=float32.")
        return precision, "as given"
    native = native_bfloat16()
    if native and cpu_collectives:
        return "float32", f"auto: {native}, but --strategy=multi_worker on CPUs, whose collectives take no bfloat16"
    return ("bfloat16", f"auto: {native}") if native else ("float32", "auto: no native bfloat16 here")


@functools.lru_cache(maxsize=None)
def make_strategy(name):
    """The tf.distribute strategy named by --strategy (multi_worker reads TF_CONFIG; tpu finds the Colab/Cloud TPU).

    One per name and process: MultiWorkerMirroredStrategy must be made before any other TensorFlow work
    (main makes it first) and train_and_evaluate then gets that same one.
    """
    if check_choice("strategy", name) == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="")
        except ValueError as error:  # Raised where no TPU is attached: "Please provide a TPU Name to connect to."
            raise ValueError(f"--strategy=tpu: no TPU found here ({error}).") from None
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)


def rows_per_replica(batch_size, replicas, batch_chunk=1):
    """The rows of each global batch that each replica takes; refuses a batch that the replicas, or rows that
    --batch_chunk's chunks, do not split evenly."""
    if batch_size % replicas:
        raise ValueError(f"The dataset's batch_size {batch_size} does not split over {replicas} replicas; "
                         f"rebuild it with a --batch_size that {replicas} divides.")
    rows = batch_size // replicas
    if rows % batch_chunk:
        raise ValueError(f"--batch_chunk={batch_chunk} does not divide the {rows} rows that each of {replicas} "
                         f"replica(s) takes of the dataset's batch_size {batch_size}; use a divisor of {rows}.")
    return rows


def is_chief(strategy):
    """Whether this process writes the run's files: every process but a multi-worker strategy's non-chief workers.

    As in TensorFlow's multi-worker tutorials, the chief is the task of type "chief", or worker 0 when the
    cluster has none. Strategies without a cluster (default, mirrored) have one process, the chief.
    """
    resolver = strategy.cluster_resolver
    if resolver is None or resolver.task_type is None:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief)


def checkpoint_write_dir(run, strategy):
    """Where this process saves checkpoints: the run's checkpoint folder on the chief.

    Under MultiWorkerMirroredStrategy every worker must save (saving reads the distributed variables
    collectively), so each other worker saves into a temporary folder of its own
    (runs.Run.worker_checkpoint_dir), which it deletes after each save.
    """
    if is_chief(strategy):
        return run.checkpoint_dir
    return run.worker_checkpoint_dir(strategy.cluster_resolver.task_id)
