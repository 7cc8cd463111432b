r"""How fast a preempted run stops: ResNet-50 checkpoint writes and SIGTERM-to-exit time.

  python benchmarks/preemption.py [--workdir=/tmp/preemption] [--image_size=64] | tail -1

SLURM sends SIGTERM and, 30 s later by default (`KillWait`), SIGKILL; a run must write its
checkpoint and exit within that. Two measurements:

1. `checkpoint`: the step checkpoint a stop writes (`train.TrainingRun.save`: model with
   its pruning masks, optimizer momentum, epoch/step counters) for a wrapped,
   80 %-sparse ResNet-50 with 1000 classes -- the paper's IMP model -- timed `--repeats`
   times into `--workdir` (put it on the filesystem your runs use: the write is I/O).
2. `sigterm`: a real `trainers/transfer.py` of that ResNet-50 at `--image_size` px on the
   bundled images; once its first step checkpoint exists, SIGTERM; seconds until the
   process has exited with status 75 (finishing the current step, writing the
   checkpoint, exiting). On a GPU the step is the small part; here on CPU it dominates.

Prints one JSON line: checkpoint bytes and seconds (median, max), SIGTERM-to-exit seconds,
the step time, the exit status and its last line.
"""
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

import dwlt_tf  # noqa: F401

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where checkpoints are written (default: a temp dir).")
flags.DEFINE_integer("image_size", 64, "Image side of the SIGTERM run.")
flags.DEFINE_integer("batch_size", 16, "Batch size of the SIGTERM run.")
flags.DEFINE_integer("repeats", 3, "Checkpoint writes to time.")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _dir_bytes(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, names in os.walk(path)
               for f in names)


def _checkpoint_seconds(root):
    import tf_keras  # pylint: disable=import-outside-toplevel
    from dwlt_tf import data, models, pruning, pruning_wrapper, train  # pylint: disable=import-outside-toplevel
    splits = data.load(data.DataSpec("imagefolder", path=os.path.join(
        REPO, "data", "cifar10_jpeg_small"), image_size=32, augment="cifar"))

    def model_fn():
        tf_keras.utils.set_random_seed(0)
        model = pruning_wrapper.wrap(models.build_resnet("resnet50", 1000))
        pruning_wrapper.set_masks(model, pruning.global_magnitude_masks(
            pruning_wrapper.get_kernels(model), None, 0.8))
        return model
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    spec = train.TrainSpec(batch_size=32, verbose=0)
    run = train.TrainingRun(model_fn, splits, spec, os.path.join(root, "run"),
                            tf.distribute.get_strategy())
    seconds = []
    for step in range(1, FLAGS.repeats + 1):
        started = time.perf_counter()
        run.save(step, "benchmark")
        seconds.append(time.perf_counter() - started)
    latest = run.manager.latest_checkpoint
    size = sum(os.path.getsize(p) for p in tf.io.gfile.glob(latest + "*"))
    return size, seconds


def _sigterm_seconds(root):
    import tf_keras  # pylint: disable=import-outside-toplevel
    from dwlt_tf import convert, models  # pylint: disable=import-outside-toplevel
    tf_keras.utils.set_random_seed(0)
    weights = os.path.join(root, "weights")
    meta = {"source": "benchmark", "source_sha256": "0" * 64, "format": "dwlt_tf",
            "arch": "resnet50", "stem": "imagenet", "base_width": 64, "num_classes": 1000,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
            "normalization": "imagenet", "masked": False}
    convert.save_converted(weights, convert.Converted(models.build_resnet("resnet50"), {}, meta))
    workdir = os.path.join(root, "transfer")
    log = open(os.path.join(root, "transfer.log"), "w")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "trainers", "transfer.py"),
         "--config=configs/transfer.py:local", f"--pretrained={weights}",
         f"--workdir={workdir}", f"--config.dataset.image_size={FLAGS.image_size}",
         "--config.dataset.augment=imagenet", f"--config.train.batch_size={FLAGS.batch_size}",
         "--config.train.mode=standard", "--config.train.checkpoint_every_steps=1",
         "--config.train.verbose=0"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    state = os.path.join(workdir, "checkpoints", "checkpoint")
    first = None
    while proc.poll() is None:
        if os.path.exists(state):
            if first is None:
                first = time.perf_counter()
            elif "ckpt-2" in open(state).read():  # one whole step timed
                break
        time.sleep(0.05)
    step = time.perf_counter() - first
    started = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    status = proc.wait()
    seconds = time.perf_counter() - started
    log.close()
    last = open(os.path.join(root, "transfer.log")).read().strip().splitlines()[-1]
    return seconds, step, status, last


def main(argv):
    del argv
    root = FLAGS.workdir or tempfile.mkdtemp(prefix="preemption-")
    os.makedirs(root, exist_ok=True)
    try:
        size, writes = _checkpoint_seconds(root)
        sigterm, step, status, last = _sigterm_seconds(root)
    finally:
        if not FLAGS.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({
        "benchmark": "preemption", "model": "resnet50 (1000 classes, wrapped, 80% sparse)",
        "checkpoint_bytes": size, "checkpoint_seconds_median": statistics.median(writes),
        "checkpoint_seconds_max": max(writes), "sigterm_to_exit_seconds": sigterm,
        "step_seconds": step, "image_size": FLAGS.image_size, "batch_size": FLAGS.batch_size,
        "exit_status": status, "last_line": last}))


if __name__ == "__main__":
    app.run(main)
