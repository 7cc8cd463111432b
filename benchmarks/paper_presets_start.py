r"""The paper's presets start and train at their real sizes: IMP on ImageNet, transfer at 224.

  python benchmarks/paper_presets_start.py --imagenet_images=20000 --steps=3 --batch_size=8

Data (generated once by benchmarks/imagenet_like.py, prepared by TFDS's own builders):
an ImageNet-like `imagenet2012` of --imagenet_images training images at ~400x350, and a
full-size `cifar10` (50,000 + 10,000 images) for the reference splits. The presets are
the trainers' own configs -- configs/imp.py:imagenet_adv (adversarial IMP, PGD-3) and
configs/transfer.py:adv_cifar10 / std_cifar10 (224-px transfer, PGD-10 / standard) --
with only the batch size shrunk for 2 CPU cores. Each runs in a fresh process: a
ResNet-50 (random weights: no robust checkpoint is reachable offline) wrapped with a
round-1 ticket (20 % pruned), `train.TrainingRun.train_step` on the real input pipeline
for --steps steps. One JSON line per preset: dataset sizes, seconds to the first step
(data + model + tracing), seconds per step, and the process's peak RSS.
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import imagenet_like  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("imagenet_images", 20000, "Training images of the ImageNet-like set.")
flags.DEFINE_integer("steps", 3, "Training steps per preset (after the first).")
flags.DEFINE_integer("batch_size", 8, "Global batch size (the presets' 2048/128/64 need GPUs).")
flags.DEFINE_string("root", imagenet_like.DEFAULT_ROOT, "Where generated data goes.")
flags.DEFINE_string("preset", None, "Internal: the preset to run in this process.")

PRESETS = ("imp:imagenet_adv", "transfer:adv_cifar10", "transfer:std_cifar10")


def load_config(family, variant):
    """configs/<family>.py's get_config(variant): the trainers' own presets (configs are
    files, not a package; loaded by path as --config does)."""
    import importlib.util  # pylint: disable=import-outside-toplevel
    spec = importlib.util.spec_from_file_location(
        f"_config_{family}", os.path.join(REPO, "configs", f"{family}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def _run(preset):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from dwlt_tf import config as cfg  # pylint: disable=import-outside-toplevel
    from dwlt_tf import (data, models, pipeline, pruning, pruning_wrapper,  # noqa
                         runtime, train)
    started = time.perf_counter()
    runtime.configure()
    family, variant = preset.split(":")
    config = load_config(family, variant)
    if family == "imp":
        data_dir = os.path.join(imagenet_like.imagenet_like(FLAGS.root, FLAGS.imagenet_images),
                                "tfds")
    else:
        data_dir = imagenet_like.prepare_cifar10(FLAGS.root)
    config.dataset.data_dir = data_dir
    config.train.batch_size = FLAGS.batch_size
    spec = cfg.train_spec(config.train)
    splits = data.load(cfg.data_spec(config.dataset))

    def model_fn():
        model = pruning_wrapper.wrap(models.build_resnet(
            "resnet50", splits.num_classes, "imagenet", *splits.spec.mean_std))
        pruning_wrapper.set_masks(model, pruning.global_magnitude_masks(
            pruning_wrapper.get_kernels(model), None, 0.2))
        return model
    strategy = tf.distribute.get_strategy()
    with train.precision_policy(spec.precision), tempfile.TemporaryDirectory() as tmp:
        run = train.TrainingRun(model_fn, splits, spec, tmp, strategy)
        iterator = iter(strategy.distribute_datasets_from_function(
            lambda context: pipeline.train_batches(splits, spec.batch_size, spec.seed, 0,
                                               with_noise=spec.attack is not None,
                                               input_context=context)))
        loss = float(run.train_step(iterator).numpy()[0])
        first = time.perf_counter() - started
        times = []
        for _ in range(FLAGS.steps):
            step_started = time.perf_counter()
            loss = float(run.train_step(iterator).numpy()[0])
            times.append(time.perf_counter() - step_started)
    return {"preset": preset, "dataset": splits.spec.label, "num_train": splits.num_train,
            "num_val": splits.num_val, "num_test": splits.num_test,
            "image_size": splits.spec.image_size, "mode": spec.mode,
            "attack_steps": spec.attack.steps if spec.attack else 0,
            "batch_size": spec.batch_size, "first_step_seconds": first,
            "seconds_per_step": sorted(times)[len(times) // 2], "finite_loss": loss == loss,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv):
    del argv
    if FLAGS.preset:
        print(json.dumps(_run(FLAGS.preset)))
        return
    imagenet_like.imagenet_like(FLAGS.root, FLAGS.imagenet_images)  # generate first
    imagenet_like.prepare_cifar10(FLAGS.root)
    for preset in PRESETS:
        out = subprocess.run([sys.executable, __file__, f"--preset={preset}",
                              f"--imagenet_images={FLAGS.imagenet_images}",
                              f"--steps={FLAGS.steps}", f"--batch_size={FLAGS.batch_size}",
                              f"--root={FLAGS.root}"], capture_output=True, text=True,
                             check=False)
        if out.returncode:
            raise SystemExit(f"{preset} failed:\n{out.stderr[-3000:]}")
        print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    app.run(main)
