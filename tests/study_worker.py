"""Runs the tiny study and (optionally) SIGKILLs itself at a chosen point: a crash test.

  python tests/study_worker.py --workdir=W [--kill_at=pretrain|imp|after_cell|export]
                               [--kill_after=N] [--shard=I/N] [--methods=imp,imp_2by4]
                               [--export_method=imp_2by4] [--onnx]

pretrain / imp: at the N-th training step of the pre-training / an IMP round;
after_cell: right after the N-th transfer cell finished; export: after the SavedModel
was written to its temporary directory, before it is renamed into place.
"""
import json
import os
import signal
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(__file__))
from conftest import load_config  # noqa: E402  (also sets up TensorFlow's devices)

import tensorflow as tf  # noqa: E402

from dwlt_tf import study, train, transfer  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Study workdir.")
flags.DEFINE_enum("kill_at", None, ["pretrain", "imp", "after_cell", "export"], "Crash point.")
flags.DEFINE_integer("kill_after", 1, "Which step / cell.")
flags.DEFINE_string("shard", None, "Run this share of the cells (study.parse_shard).")
flags.DEFINE_float("stale_seconds", 0, "Leases' stale time (0: the config's).")
flags.DEFINE_list("methods", None, "pruning.methods (default: the tiny config's).")
flags.DEFINE_string("export_method", None, "export.method (default: the tiny config's).")
flags.DEFINE_bool("onnx", False, "export.onnx.")


def _die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _count_then_die():
    _count_then_die.calls += 1
    if _count_then_die.calls == FLAGS.kill_after:
        _die()
    return 0


_count_then_die.calls = 0


def _instrument():
    if FLAGS.kill_at in ("pretrain", "imp"):
        original = train.TrainingRun._train_step  # pylint: disable=protected-access
        stage = f"{os.sep}{FLAGS.kill_at}_"

        def step(self, iterator, stop=None):
            out = original(self, iterator, stop)
            if stage in self.workdir:
                tf.py_function(_count_then_die, [], tf.int64)
            return out
        train.TrainingRun._train_step = step  # pylint: disable=protected-access
    elif FLAGS.kill_at == "after_cell":
        original_run = transfer.run

        def run(*args, **kwargs):
            result = original_run(*args, **kwargs)
            _count_then_die()
            return result
        transfer.run = run
    elif FLAGS.kill_at == "export":
        original_save = tf.saved_model.save

        def save(*args, **kwargs):
            original_save(*args, **kwargs)
            _die()
        tf.saved_model.save = save


def main(argv):
    del argv
    _instrument()
    select = study.parse_shard(FLAGS.shard) if FLAGS.shard else None
    config = load_config("study", "tiny")
    if FLAGS.methods:
        config.pruning.methods = tuple(FLAGS.methods)
    if FLAGS.export_method:
        config.export.method = FLAGS.export_method
    config.export.onnx = FLAGS.onnx
    if FLAGS.stale_seconds:
        config.leases.update(dict(heartbeat_seconds=FLAGS.stale_seconds / 4,
                                  stale_seconds=FLAGS.stale_seconds))
    runner = study.Study(config, FLAGS.workdir, log=print, select=select)
    runner.run()
    print("ran " + json.dumps(runner.ran))
    print("study finished")


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    app.run(main)
