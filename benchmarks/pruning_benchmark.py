r"""IMP's costs on ResNet-50: the global mask computation and masked vs dense training steps.

  python benchmarks/pruning_benchmark.py [--image_size=32 --batch_size=64]

Goals (issue: IMP on TF-MOT wrappers): mask computation < 1 s; the masked training
step within 5 % of the dense one. Prints one final JSON line.
"""
import json
import os
import subprocess
import sys
import time

from absl import app, flags

import dwlt_tf  # noqa: F401

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 32, "Image side for the step timing.")
flags.DEFINE_integer("batch_size", 64, "Batch size for the step timing.")
flags.DEFINE_integer("steps", 10, "Timed steps per measurement.")
flags.DEFINE_integer("repeats", 3, "Alternating dense/masked measurements (noisy machine).")

HERE = os.path.dirname(os.path.abspath(__file__))


def _step_ms(pruned):
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "adversarial_training_throughput.py"),
         "--arch=resnet50", "--stem=cifar", f"--image_size={FLAGS.image_size}",
         f"--batch_size={FLAGS.batch_size}", "--attack_steps=0", f"--steps={FLAGS.steps}",
         f"--pruned={pruned}", "--sparsity=0.8"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["step_ms_median"]


def main(argv):
    del argv
    import numpy as np  # pylint: disable=import-outside-toplevel
    from dwlt_tf import models, pruning, pruning_wrapper  # pylint: disable=import-outside-toplevel
    kernels = pruning_wrapper.get_kernels(pruning_wrapper.wrap(models.build_resnet("resnet50")))
    total = sum(k.size for k in kernels.values())
    timings, masks = [], None
    for _ in range(11):  # 11 IMP rounds, the kernels perturbed between them
        kernels = {n: k + np.float32(1e-3) * np.random.standard_normal(k.shape).astype(np.float32)
                   for n, k in kernels.items()}
        start = time.perf_counter()
        masks = pruning.global_magnitude_masks(kernels, masks, 0.2)
        timings.append(time.perf_counter() - start)
    dense, masked = [], []
    for _ in range(FLAGS.repeats):
        dense.append(_step_ms(False))
        masked.append(_step_ms(True))
    dense_ms, masked_ms = float(np.median(dense)), float(np.median(masked))
    print(json.dumps({
        "conv_weights": int(total), "mask_seconds_first_round": timings[0],
        "mask_seconds_max": max(timings), "mask_seconds_median": float(np.median(timings)),
        "dense_step_ms": dense_ms, "masked_step_ms": masked_ms,
        "masked_over_dense": masked_ms / dense_ms,
        "goals": {"mask_seconds": "< 1", "masked_over_dense": "<= 1.05"},
        "config": {"arch": "resnet50", "image_size": FLAGS.image_size,
                   "batch_size": FLAGS.batch_size, "steps": FLAGS.steps,
                   "repeats": FLAGS.repeats, "sparsity": 0.8}}))


if __name__ == "__main__":
    app.run(main)
