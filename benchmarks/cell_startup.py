r"""What one cell's job costs before its work, as the study grows: flat, not O(cells).

  python benchmarks/cell_startup.py [--root=/tmp/cell_startup] | tail -1

A SLURM job or `--cell` command computes one cell; at paper scale there are thousands.
Measured here, each in a fresh process (`trainers/study.py --cell=<address>`):

* `first_step_seconds`: process start -> the first training step of one transfer cell
  (Python, TensorFlow, config validation, the cell graph, resolving the cell's inputs
  from their records, loading its dataset and weights, building and tracing the step);
* `noop_seconds`: process start -> exit of the same command on a finished cell;

for the `tiny` study (9 cells) and the same study with ~10x more cells (10 seeds, the OMP
and random baselines at every round: `--config.seeds`, `--config.pruning.methods`),
which share their pre-training and IMP cells (made once, first). Goal: the large study's
times within 1.5x of the small one's. Also `paper_plan_seconds`: `--plan` of the paper
preset (ResNet-50, 3 pre-trainings, 9 downstream tasks, 3 seeds, baselines, audit: ~2,700
cells) on generated converted-weights records.

Prints one JSON line.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS


def _define_flags():
    """Only when run (report_bootstrap.py imports `paper_weights` from here)."""
    flags.DEFINE_string("root", None, "Working directory (default: a temp dir, removed "
                                      "after).")
    flags.DEFINE_integer("repeats", 3, "Runs per measurement (the median is reported).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = [sys.executable, os.path.join(REPO, "trainers", "study.py"),
         "--config=configs/study.py:tiny"]
LARGE = ["--config.seeds=(1,2,3,4,5,6,7,8,9,10)",
         "--config.pruning.methods=('imp','omp','random')"]
# Runs the study binary; at its first training step prints the seconds since the
# benchmark launched the process and exits.
_STOPPER = r"""
import os, runpy, sys, time
started = float(os.environ["CELL_STARTUP_T0"])
from dwlt_tf import train
original = train.TrainingRun._train_step
def step(self, iterator, stop=None):
    out = original(self, iterator, stop)
    import tensorflow as tf
    def report():
        print(f"FIRST_STEP {time.time() - started:.3f}", flush=True)
        os._exit(0)
    tf.py_function(lambda: report() or 0, [], tf.int64)
    return out
train.TrainingRun._train_step = step
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _median(values):
    values = sorted(values)
    return values[len(values) // 2]


def _first_step(workdir, address, extra):
    times = []
    for _ in range(FLAGS.repeats):
        env = dict(os.environ, CELL_STARTUP_T0=repr(time.time()))
        out = subprocess.run([sys.executable, "-c", _STOPPER] + STUDY[1:] + extra + [
            f"--workdir={workdir}", f"--cell={address}"], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=1200)
        line = next((l for l in out.stdout.splitlines() if l.startswith("FIRST_STEP")), None)
        if line is None:
            raise RuntimeError(out.stderr[-3000:])
        times.append(float(line.split()[1]))
        _forget_unfinished(workdir)
    return _median(times)


def _forget_unfinished(workdir):
    """Removes the stopped transfer cell, so the next run starts it afresh."""
    for name in os.listdir(os.path.join(workdir, "cells")):
        path = os.path.join(workdir, "cells", name)
        if name.startswith("transfer_") and not os.path.exists(
                os.path.join(path, "result.json")):
            shutil.rmtree(path)


def _noop(workdir, address, extra):
    times = []
    for _ in range(FLAGS.repeats):
        started = time.time()
        subprocess.run(STUDY + extra + [f"--workdir={workdir}", f"--cell={address}"], cwd=REPO,
                       capture_output=True, text=True, timeout=600, check=True)
        times.append(time.time() - started)
    return _median(times)


def _addresses(workdir, extra):
    plan = os.path.join(workdir, "plan.json")
    subprocess.run(STUDY + extra + [f"--workdir={workdir}", f"--plan={plan}"], cwd=REPO,
                   capture_output=True, text=True, timeout=600, check=True)
    cells = json.load(open(plan))["cells"]
    return [c["cell"] for c in cells]


def paper_weights(root):
    """{pre-training: directory}: the paper preset's three converted-weights records
    (`converted.json` only -- all a plan or a report reads), written under `root`."""
    weights = {}
    for name in ("standard", "fast_adversarial", "adversarial"):
        path = os.path.join(root, "weights", name)
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "converted.json"), "w") as f:
            json.dump({"arch": "resnet50", "stem": "imagenet", "base_width": 64,
                       "num_classes": 1000, "mean": [0.485, 0.456, 0.406],
                       "std": [0.229, 0.224, 0.225], "source_sha256": name * 4}, f)
        weights[name] = path
    return weights


def _paper_plan(root):
    weights = paper_weights(root)
    plan = os.path.join(root, "paper_plan.json")
    started = time.time()
    subprocess.run([sys.executable, os.path.join(REPO, "trainers", "study.py"),
                    "--config=configs/study.py:paper", f"--workdir={root}/paper",
                    f"--plan={plan}"] + [f"--config.pretrainings.{n}.path={p}"
                                         for n, p in weights.items()],
                   cwd=REPO, capture_output=True, text=True, timeout=600, check=True)
    return time.time() - started, len(json.load(open(plan))["cells"])


def main(argv):
    del argv
    root = FLAGS.root or tempfile.mkdtemp(prefix="cell_startup-")
    os.makedirs(root, exist_ok=True)
    workdir = os.path.join(root, "study")
    try:
        # The shared upstream cells (pre-training, IMP) and one finished transfer.
        small = _addresses(workdir, [])
        large = _addresses(workdir, LARGE)
        dense = next(a for a in small if a.startswith("transfer:") and ":dense:" in a)
        ticket = next(a for a in small if a.startswith("transfer:") and ":imp:r2:" in a)
        for address in ("pretrain:adversarial", "imp:adversarial", dense):
            subprocess.run(STUDY + [f"--workdir={workdir}", f"--cell={address}"], cwd=REPO,
                           capture_output=True, text=True, timeout=1200, check=True)
        result = {"benchmark": "cell_startup", "small_cells": len(small),
                  "large_cells": len(large)}
        for label, extra in (("small", []), ("large", LARGE)):
            result[f"{label}_first_step_seconds"] = _first_step(workdir, ticket, extra)
            result[f"{label}_noop_seconds"] = _noop(workdir, dense, extra)
        for what in ("first_step", "noop"):
            result[f"{what}_ratio"] = (result[f"large_{what}_seconds"]
                                       / result[f"small_{what}_seconds"])
        result["paper_plan_seconds"], result["paper_cells"] = _paper_plan(root)
    finally:
        if not FLAGS.root:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
