"""Process-wide TensorFlow settings: threads, determinism, distribution strategy.

Call `configure()` once, first thing in a binary (TensorFlow fixes its thread pools
when it runs its first op). The defaults are what measured fastest on CPU (see
benchmarks/README.md): TF's own default pairs as many inter-op threads as intra-op
threads and oversubscribes the cores of a small machine, while a training step has
little inter-op parallelism to exploit.
"""
import dataclasses
import json
import os

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf

from dwlt_tf import checks

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "slurm")
_STRATEGY_CACHE = {}
_JIT_COMPILE = [False]
_DETERMINISTIC = [False]


@dataclasses.dataclass(frozen=True)
class Settings:
    """The process settings that change a run's numbers: part of every training's
    identity (`train.run_identity`). Replicas: per-replica BatchNorm statistics (IMP,
    pre-training) change with them; XLA, op determinism and oneDNN round differently."""
    replicas: int = 1
    jit_compile: bool = False
    deterministic: bool = False
    onednn: bool = True        # TF_ENABLE_ONEDNN_OPTS=0 turns oneDNN's kernels off


def settings(strategy=None) -> Settings:
    """This process's `Settings` under `strategy` (default: the current one)."""
    strategy = strategy or tf.distribute.get_strategy()
    return Settings(strategy.num_replicas_in_sync, _JIT_COMPILE[0], _DETERMINISTIC[0],
                    os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0")


def jit_compile():
    """Whether training steps, attacks and evaluation compile with XLA (`configure`)."""
    return _JIT_COMPILE[0]


def configure(intra_op_threads=0, inter_op_threads=1, deterministic=False, jit_compile=False):
    """Sets thread pools (0 = TF's choice), optional op determinism and XLA.

    Args:
      intra_op_threads: threads inside one op (0: all cores).
      inter_op_threads: ops run concurrently (1 measured fastest for these models on
        CPU; 0 restores TF's default).
      deterministic: `tf.config.experimental.enable_op_determinism()`, making reruns
        and resumed runs bit-identical (slower on GPU).
      jit_compile: compile each replica's training step, the attacks of eager callers
        and each evaluation step with XLA. A GPU setting: same results up to float
        rounding (tests/test_runtime.py), but several times slower on CPU
        (benchmarks/README.md). Applies to steps built after the call.
    """
    checks.boolean("runtime.jit_compile", jit_compile)
    checks.boolean("runtime.deterministic", deterministic)
    checks.non_negative_int("runtime.intra_op_threads", intra_op_threads)
    checks.non_negative_int("runtime.inter_op_threads", inter_op_threads)
    _JIT_COMPILE[0] = jit_compile
    _DETERMINISTIC[0] = _DETERMINISTIC[0] or deterministic  # cannot be turned off again
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    except RuntimeError:
        # TensorFlow already started; its pools are fixed. Not fatal: say so.
        current = (tf.config.threading.get_intra_op_parallelism_threads(),
                   tf.config.threading.get_inter_op_parallelism_threads())
        if current != (intra_op_threads, inter_op_threads):
            print(f"runtime.configure: TensorFlow already initialized with threads "
                  f"(intra, inter) = {current}; keeping them")
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def is_chief(strategy):
    """Whether this process is the chief of its (multi-worker) strategy: the one that
    writes a run's outputs. Single-process strategies: always."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def slurm_tasks():
    """The number of tasks of the SLURM job step this process runs in (0: not in one)."""
    if "SLURM_PROCID" not in os.environ:
        return 0
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1")))


def _slurm_resolver():
    """TensorFlow's SlurmClusterResolver for this job step: one worker per task.

    Ports: `DWLT_SLURM_PORT_BASE` + the task's index on its node, by default derived from
    the job id (jobs sharing a node use different ports). GPUs: the ones SLURM made
    visible to the task (CUDA_VISIBLE_DEVICES), left as they are.
    """
    job = int(os.environ.get("SLURM_JOB_ID", "0") or 0)
    port_base = int(os.environ.get("DWLT_SLURM_PORT_BASE", 20000 + (job % 4000) * 8))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    per_task = (len([d for d in visible.split(",") if d]) if visible is not None
                else len(tf.config.list_physical_devices("GPU")))
    per_node = max(int(n.split("(")[0]) for n in
                   os.environ.get("SLURM_STEP_TASKS_PER_NODE", "1").split(","))
    # The resolver steps through GPUs per task when packing tasks (a step of 0 fails on
    # CPU-only nodes): it gets a nominal 1 there (auto_set_gpu=False: the packing sets
    # nothing), and the strategy gets the real count through a SimpleClusterResolver.
    slurm = tf.distribute.cluster_resolver.SlurmClusterResolver(
        port_base=port_base, gpus_per_node=max(per_task, 1) * per_node,
        gpus_per_task=max(per_task, 1), auto_set_gpu=False)
    spec = slurm.cluster_spec()
    task_type, task_id = slurm.get_task_info()
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        spec, task_type=task_type, task_id=task_id, num_accelerators={"GPU": per_task},
        rpc_layer=slurm.rpc_layer)


def all_agree(strategy, yes):
    """Whether every worker of `strategy` says `yes` (a collective: every worker calls it
    at the same point)."""
    @tf.function
    def count_no(no):
        per_replica = strategy.run(lambda: tf.identity(no))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    return float(count_no(tf.constant(0.0 if yes else 1.0))) == 0.0


def multi_worker(strategy):
    """Whether `strategy` spans several worker processes (MultiWorkerMirroredStrategy)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return False
    tasks = resolver.cluster_spec().as_dict()
    return sum(len(members) for members in tasks.values()) > 1


def strategy(name="auto"):
    """The process's tf.distribute strategy of that name (created once, then reused).

    auto: MultiWorkerMirrored when TF_CONFIG names a cluster, or over the tasks of a
    SLURM job step with several tasks (`slurm`: TensorFlow's SlurmClusterResolver, no
    hand-written TF_CONFIG); Mirrored over the local GPUs when there are several, else
    the default strategy (CPU or one GPU). One object per process matters: each new
    strategy numbers its collectives from scratch and can collide with an earlier one's
    ("Shape mismatch in the collective instance").
    """
    checks.choice("runtime.strategy", name, STRATEGIES)
    if name == "auto":
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster")
        if cluster:
            name = "multi_worker"
        elif slurm_tasks() > 1:
            name = "slurm"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name not in _STRATEGY_CACHE:
        if name == "multi_worker":
            _STRATEGY_CACHE[name] = tf.distribute.MultiWorkerMirroredStrategy()
        elif name == "slurm":
            _STRATEGY_CACHE[name] = tf.distribute.MultiWorkerMirroredStrategy(
                cluster_resolver=_slurm_resolver())
        elif name == "mirrored":
            _STRATEGY_CACHE[name] = tf.distribute.MirroredStrategy()
        else:
            _STRATEGY_CACHE[name] = tf.distribute.get_strategy()
    return _STRATEGY_CACHE[name]
