"""Process-wide TensorFlow settings: threads, determinism, distribution strategy.

Call `configure()` once, first thing in a binary (TensorFlow fixes its thread pools
when it runs its first op). The defaults are what measured fastest on CPU (see
benchmarks/README.md): TF's own default pairs as many inter-op threads as intra-op
threads and oversubscribes the cores of a small machine, while a training step has
little inter-op parallelism to exploit.
"""
import json
import os

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
_STRATEGY_CACHE = {}
_JIT_COMPILE = [False]


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
    if not isinstance(jit_compile, bool):
        raise ValueError(f"jit_compile must be True or False, got {jit_compile!r}")
    _JIT_COMPILE[0] = jit_compile
    for name, value in (("intra_op_threads", intra_op_threads),
                        ("inter_op_threads", inter_op_threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
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


def multi_worker(strategy):
    """Whether `strategy` spans several worker processes (MultiWorkerMirroredStrategy)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return False
    tasks = resolver.cluster_spec().as_dict()
    return sum(len(members) for members in tasks.values()) > 1


def strategy(name="auto"):
    """The process's tf.distribute strategy of that name (created once, then reused).

    auto: MultiWorkerMirrored when TF_CONFIG names a cluster, Mirrored over the local
    GPUs when there are several, else the default strategy (CPU or one GPU). One object
    per process matters: each new strategy numbers its collectives from scratch and can
    collide with an earlier one's ("Shape mismatch in the collective instance").
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; choose one of {STRATEGIES}")
    if name == "auto":
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster")
        if cluster:
            name = "multi_worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name not in _STRATEGY_CACHE:
        if name == "multi_worker":
            _STRATEGY_CACHE[name] = tf.distribute.MultiWorkerMirroredStrategy()
        elif name == "mirrored":
            _STRATEGY_CACHE[name] = tf.distribute.MirroredStrategy()
        else:
            _STRATEGY_CACHE[name] = tf.distribute.get_strategy()
    return _STRATEGY_CACHE[name]
