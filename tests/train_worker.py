"""A small training run in its own process, for kill/resume and multi-worker tests.

  python tests/train_worker.py --workdir=DIR --mode=pgd --epochs=2 [--strategy=multi_worker]

Trains a base_width-8 ResNet-18 (cifar stem, sync BatchNorm for multi-worker) on the
bundled CIFAR-10 JPEGs, classes 0-4, with half of its conv weights pruned, and writes
the final weights and masks to <workdir>/final.npz.
"""
import os
import sys

from absl import app, flags

import dwlt_tf  # noqa: F401
from dwlt_tf import (attacks, cli, data, models, pipeline, pruning, pruning_wrapper, runtime,
                     train)

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory.")
flags.DEFINE_enum("mode", "pgd", list(train.MODES), "Training mode.")
flags.DEFINE_integer("epochs", 2, "Epochs.")
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_float("data_rate", 0.15, "Training data rate.")
flags.DEFINE_integer("checkpoint_every_steps", 2, "Step checkpoints.")
flags.DEFINE_integer("eval_batch_size", 256, "Evaluation batch size.")
flags.DEFINE_enum("strategy", "default", list(runtime.STRATEGIES), "Distribution strategy.")
flags.DEFINE_integer("slow_ms", 0, "Sleep per step (gives a test time to kill us).")
flags.DEFINE_bool("die_after_records", False, "SIGKILL this process right after it writes "
                                              "its test records (before result.json).")
flags.DEFINE_bool("record_indices", False, "Write the training examples this process read "
                                           "to <workdir>/indices-<task>.json.")

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                    "cifar10_jpeg_small")


def main(argv):
    del argv
    runtime.configure(deterministic=True)
    strategy = runtime.strategy(FLAGS.strategy)
    sync = runtime.multi_worker(strategy)  # TF_CONFIG or SLURM: several workers
    splits = data.load(data.DataSpec("imagefolder", path=ROOT, image_size=32, augment="cifar",
                                     stats="cifar10", classes=(0, 1, 2, 3, 4),
                                     data_rate=FLAGS.data_rate))

    def model_fn():
        import tf_keras  # pylint: disable=import-outside-toplevel
        tf_keras.utils.set_random_seed(5)
        model = pruning_wrapper.wrap(models.build_resnet(
            "resnet18", 5, "cifar", *splits.spec.mean_std, base_width=8, sync_batchnorm=sync))
        pruning_wrapper.set_masks(model, pruning.global_magnitude_masks(
            pruning_wrapper.get_kernels(model), None, 0.5))
        return model

    consumed = []
    if FLAGS.record_indices:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        original_batches = pipeline.train_batches

        def recording(*args, **kwargs):
            epoch = kwargs.get("epoch", args[3] if len(args) > 3 else None)

            def note(batch):
                noted = tf.py_function(
                    lambda index: consumed.append([int(epoch), index.numpy().tolist()]) or 0,
                    [batch["index"]], tf.int32)
                with tf.control_dependencies([noted]):
                    return tf.nest.map_structure(tf.identity, batch)
            return original_batches(*args, **kwargs).map(note)
        pipeline.train_batches = recording

    if FLAGS.slow_ms:
        import time  # pylint: disable=import-outside-toplevel
        original = train.TrainingRun._train_step  # pylint: disable=protected-access

        def slow(self, iterator, stop=None):
            import tensorflow as tf  # pylint: disable=import-outside-toplevel
            out = original(self, iterator, stop)
            tf.py_function(lambda: time.sleep(FLAGS.slow_ms / 1000), [], [])
            return out
        train.TrainingRun._train_step = slow  # pylint: disable=protected-access

    if FLAGS.die_after_records:
        import signal  # pylint: disable=import-outside-toplevel
        from dwlt_tf import records  # pylint: disable=import-outside-toplevel
        original_write = records.write

        def write_then_die(*args, **kwargs):
            original_write(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        records.write = write_then_die

    spec = train.TrainSpec(mode=FLAGS.mode, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
                           lr=0.05, milestones=(1,), attack=attacks.Attack(8 / 255, 2 / 255, 2)
                           if FLAGS.mode == "pgd" else None,
                           eval_attack=attacks.Attack(8 / 255, 2 / 255, 2),
                           checkpoint_every_steps=FLAGS.checkpoint_every_steps,
                           eval_batch_size=FLAGS.eval_batch_size, verbose=0)
    with cli.reported("train_worker"):  # as the trainers: SIGTERM stops gracefully
        result = train.fit(model_fn, splits, spec, FLAGS.workdir, strategy)
    import numpy as np  # pylint: disable=import-outside-toplevel
    arrays = {f"w{i}": w for i, w in enumerate(result.model.get_weights())}
    arrays.update({f"mask/{n}": m for n, m in pruning_wrapper.get_masks(result.model).items()})
    name = "final.npz"
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and resolver.task_type:
        name = f"final-{resolver.task_type}-{resolver.task_id}.npz"
    np.savez(os.path.join(FLAGS.workdir, name), **arrays)
    if FLAGS.record_indices:
        import json  # pylint: disable=import-outside-toplevel
        suffix = f"-{resolver.task_type}-{resolver.task_id}" if resolver is not None and \
            resolver.task_type else ""
        with open(os.path.join(FLAGS.workdir, f"indices{suffix}.json"), "w") as f:
            json.dump(consumed, f)
    print("done", result.best_sa, file=sys.stderr)


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    app.run(main)
