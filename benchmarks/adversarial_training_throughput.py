r"""Throughput of dwlt_tf's own training step: attack + forward + backward + masked SGD.

Times `train.TrainingRun.train_step` -- exactly the step the trainers run -- on a pruned
model (TF-MOT wrappers with global masks) after warm-up, on synthetic in-memory images
fed through the real input pipeline. Prints one final JSON line.

  python benchmarks/adversarial_training_throughput.py --arch=resnet50 --stem=cifar \
      --image_size=32 --batch_size=64 --attack_steps=10 --precision=bfloat16

--attack_steps=0 times a clean (standard) training step. --precision: float32,
bfloat16 (Keras mixed_bfloat16) or float16 (mixed_float16 with loss scaling).
--mode=eval times `evaluate.Evaluator` -- the trainers' validation and test -- on
`steps` batches: SA plus PGD-`attack_steps` RA in inference mode (BatchNorm folded).
--jit_compile compiles with XLA (runtime.configure). On a GPU:
--precision=float16 --jit_compile.
"""
import json
import os
import platform
import shutil
import tempfile
import time

from absl import app, flags

import dwlt_tf  # noqa: F401
from dwlt_tf import runtime

FLAGS = flags.FLAGS
flags.DEFINE_enum("arch", "resnet50", ["resnet18", "resnet50"], "Architecture.")
flags.DEFINE_enum("stem", "cifar", ["imagenet", "cifar"], "Stem.")
flags.DEFINE_integer("image_size", 32, "Image side.")
flags.DEFINE_integer("batch_size", 64, "Global batch size.")
flags.DEFINE_integer("attack_steps", 10, "PGD steps (0: clean training step).")
flags.DEFINE_integer("steps", 10, "Timed steps.")
flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing, allocation).")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16", "float16"], "Precision.")
flags.DEFINE_float("sparsity", 0.8, "Global sparsity of the pruned model.")
flags.DEFINE_bool("pruned", True, "Wrap the model for pruning (False: the plain dense model).")
flags.DEFINE_integer("base_width", 64, "ResNet width (64 = torchvision).")
flags.DEFINE_integer("intra_op_threads", 0, "0: all cores.")
flags.DEFINE_integer("inter_op_threads", 1, "Inter-op threads (1 measured fastest on CPU).")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "Time the training step or evaluation.")
flags.DEFINE_bool("jit_compile", False, "Compile with XLA.")
flags.DEFINE_integer("eval_repeats", 3, "--mode=eval: timed evaluations (after one untimed).")
flags.DEFINE_bool("fold_batchnorm", True, "--mode=eval: BatchNorm folded (as the trainers).")

_PRECISION = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def main(argv):
    del argv
    runtime.configure(FLAGS.intra_op_threads, FLAGS.inter_op_threads,
                      jit_compile=FLAGS.jit_compile)
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from dwlt_tf import (attacks, data, evaluate, models, pipeline, pruning,  # noqa
                         pruning_wrapper, train)

    size = FLAGS.image_size
    needed = FLAGS.batch_size * (FLAGS.steps + FLAGS.warmup)
    test_images = FLAGS.batch_size * FLAGS.steps if FLAGS.mode == "eval" else 20
    rng = np.random.default_rng(0)
    folder = tempfile.mkdtemp(prefix="throughput-images-")
    # Synthetic images through the real reader: an ImageFolder of PNGs, 10 classes.
    train_files = needed + 20  # ~1 per class becomes the (unused) validation split
    for k in range(train_files + test_images):
        split = "train" if k < train_files else "test"
        path = os.path.join(folder, split, f"class{k % 10}", f"{k:06d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tf.io.write_file(path, tf.io.encode_png(
            rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
    splits = data.load(data.DataSpec(
        "imagefolder", path=folder, image_size=size, val_fraction=10 / train_files,
        augment="cifar" if FLAGS.stem == "cifar" else "imagenet"))

    def model_fn():
        model = models.build_resnet(FLAGS.arch, 10, FLAGS.stem, base_width=FLAGS.base_width)
        if not FLAGS.pruned:
            return model
        model = pruning_wrapper.wrap(model)
        if FLAGS.sparsity:
            pruning_wrapper.set_masks(model, pruning.one_shot_magnitude_masks(
                pruning_wrapper.get_kernels(model), FLAGS.sparsity))
        return model

    attack = attacks.Attack(8 / 255, 2 / 255, FLAGS.attack_steps) if FLAGS.attack_steps else None
    train_spec = train.TrainSpec(mode="pgd" if attack else "standard", epochs=1,
                                 batch_size=FLAGS.batch_size, lr=0.01, attack=attack,
                                 eval_attack=None, precision=_PRECISION[FLAGS.precision],
                                 verbose=0)
    with train.precision_policy(train_spec.precision), tempfile.TemporaryDirectory() as tmp:
        times = []
        if FLAGS.mode == "train":
            run = train.TrainingRun(model_fn, splits, train_spec, tmp,
                                    tf.distribute.get_strategy())
            iterator = iter(pipeline.train_batches(splits, FLAGS.batch_size, 0, 0,
                                                   with_noise=attack is not None))
            for step in range(FLAGS.warmup + FLAGS.steps):
                start = time.perf_counter()
                run.train_step(iterator).numpy()
                if step >= FLAGS.warmup:
                    times.append(time.perf_counter() - start)
        else:  # whole evaluations of `steps` batches; per-batch time = total / steps
            evaluator = evaluate.Evaluator(model_fn(), attack,
                                           fold_batchnorm=FLAGS.fold_batchnorm)
            for step in range(1 + FLAGS.eval_repeats):  # the first call traces
                start = time.perf_counter()
                evaluator(splits, "test", FLAGS.batch_size)
                if step >= 1:
                    times.append((time.perf_counter() - start) / FLAGS.steps)
    shutil.rmtree(folder, ignore_errors=True)
    times_ms = np.array(times) * 1000
    median = float(np.median(times_ms))
    print(json.dumps({
        "framework": "dwlt_tf", "images_per_sec": FLAGS.batch_size / (median / 1000),
        "images_per_sec_best": FLAGS.batch_size / (float(np.min(times_ms)) / 1000),
        "step_ms_median": median, "step_ms_p90": float(np.percentile(times_ms, 90)),
        "config": {"arch": FLAGS.arch, "stem": FLAGS.stem, "image_size": size,
                   "batch_size": FLAGS.batch_size, "attack_steps": FLAGS.attack_steps,
                   "precision": FLAGS.precision, "pruned": FLAGS.pruned,
                   "sparsity": FLAGS.sparsity if FLAGS.pruned else 0.0,
                   "base_width": FLAGS.base_width, "steps": FLAGS.steps, "warmup": FLAGS.warmup,
                   "intra_op_threads": FLAGS.intra_op_threads,
                   "inter_op_threads": FLAGS.inter_op_threads, "mode": FLAGS.mode,
                   "jit_compile": FLAGS.jit_compile, "fold_batchnorm": FLAGS.fold_batchnorm,
                   "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")},
        "tf_version": tf.__version__, "machine": platform.machine(),
        "cpus": os.cpu_count()}))


if __name__ == "__main__":
    app.run(main)
