"""devices.py: the chief of a cluster and where each worker saves, the precision auto picks, the rows each replica
takes, and each choice refused by name."""
import types

import pytest
import tensorflow as tf

import devices
import runs



def test_the_chief_is_task_chief_or_else_worker_0_and_only_it_saves_into_the_run(tmp_path):
    def strategy(cluster, task_type, task_id):
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)
        return types.SimpleNamespace(cluster_resolver=resolver)

    workers = {"worker": ["localhost:1", "localhost:2"]}
    with_chief = {"chief": ["localhost:3"], **workers}
    assert devices.is_chief(tf.distribute.get_strategy())
    assert devices.is_chief(strategy(workers, "worker", 0)) and not devices.is_chief(strategy(workers, "worker", 1))
    assert devices.is_chief(strategy(with_chief, "chief", 0)) and not devices.is_chief(strategy(with_chief, "worker", 0))
    run = runs.Run(tmp_path)
    assert devices.checkpoint_write_dir(run, strategy(workers, "worker", 0)) == run.checkpoint_dir
    assert devices.checkpoint_write_dir(run, strategy(workers, "worker", 1)) == tmp_path / "workertemp_1" / "checkpoints"


def test_auto_precision_takes_bfloat16_only_where_it_is_native(monkeypatch):
    monkeypatch.setattr(devices, "native_bfloat16", lambda: "CPU with amx_bf16")
    assert devices.resolve_precision("auto") == ("bfloat16", "auto: CPU with amx_bf16")
    assert devices.dtype_policy("auto") == "mixed_bfloat16"
    monkeypatch.setattr(devices, "native_bfloat16", lambda: None)
    assert devices.resolve_precision("auto")[0] == "float32" and devices.dtype_policy("auto") == "float32"
    assert devices.resolve_precision("float16") == ("float16", "as given")


def test_the_cpu_flags_that_make_bfloat16_native_are_read_from_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: [])
    cpuinfo = tmp_path / "cpuinfo"
    real_path = devices.pathlib.Path
    monkeypatch.setattr(devices.pathlib, "Path", lambda path: cpuinfo if path == "/proc/cpuinfo" else real_path(path))
    cpuinfo.write_text("processor: 0\nflags\t\t: fpu avx2 avx512_bf16 amx_bf16 amx_tile\n")
    assert devices.native_bfloat16() == "CPU with avx512_bf16 and amx_bf16"
    cpuinfo.write_text("processor: 0\nflags\t\t: fpu avx2 fma\n")
    assert devices.native_bfloat16() is None


@pytest.mark.parametrize("call, flag", [(lambda: devices.use_xla("yes"), "--jit_compile='yes'"),
                                        (lambda: devices.dtype_policy("int8"), "--precision='int8'"),
                                        (lambda: devices.make_strategy("gpu"), "--strategy='gpu'")])
def test_each_choice_is_refused_by_its_flag(call, flag):
    with pytest.raises(ValueError, match=flag):
        call()


def test_rows_per_replica_refuses_batches_and_chunks_that_do_not_split_evenly():
    assert devices.rows_per_replica(8, 2) == 4 and devices.rows_per_replica(8, 2, batch_chunk=4) == 4
    with pytest.raises(ValueError, match="batch_size 6 does not split over 4 replicas"):
        devices.rows_per_replica(6, 4)
    with pytest.raises(ValueError, match=r"--batch_chunk=3 does not divide the 4 rows that each of 2 replica\(s\) takes "
                                         r"of the dataset's batch_size 8; use a divisor of 4\."):
        devices.rows_per_replica(8, 2, batch_chunk=3)
