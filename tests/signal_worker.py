"""Runs a binary and sends the process a signal at a chosen point: a preemption test.

  python tests/signal_worker.py --at=<workdir part>:<N>[:eval] [--signal=TERM] \
      trainers/transfer.py --config=... (the binary's own arguments)

The signal (SIGTERM by default) is sent by the process to itself from inside the N-th
training step (or, with `:eval`, the N-th evaluation batch) of the first run whose
workdir contains <workdir part>, exactly as a scheduler's signal arriving during that
step would be; then the binary runs on unchanged (`runpy`, as `python <binary>`).
"""
import os
import runpy
import signal
import sys

sys.path.insert(0, os.path.dirname(__file__))
import conftest  # noqa: E402,F401  (two logical CPUs, as the tests see them)

import tensorflow as tf  # noqa: E402

from dwlt_tf import evaluate, train  # noqa: E402


def main():
    args = sys.argv[1:]
    at = next(a for a in args if a.startswith("--at="))[len("--at="):]
    name = next((a for a in args if a.startswith("--signal=")), "--signal=TERM")[9:]
    args = [a for a in args if not a.startswith(("--at=", "--signal="))]
    part, count, *kind = at.split(":")
    count, signum = int(count), getattr(signal, f"SIG{name}")
    calls = [0]

    def maybe_signal():
        calls[0] += 1
        if calls[0] == count:
            os.kill(os.getpid(), signum)
        return 0

    if kind == ["eval"]:
        original_eval = evaluate.Evaluator._distributed_step  # pylint: disable=protected-access

        def eval_step(self, batch, stop, *rest):
            if part in getattr(self, "workdir_hint", ""):
                tf.py_function(maybe_signal, [], tf.int64)
            return original_eval(self, batch, stop, *rest)
        evaluate.Evaluator._distributed_step = eval_step  # pylint: disable=protected-access
        original_init = train.TrainingRun.__init__

        def init(self, *a, **k):
            original_init(self, *a, **k)
            for evaluator in (self.evaluator, self.val_evaluator):
                evaluator.workdir_hint = self.workdir
        train.TrainingRun.__init__ = init
    else:
        original = train.TrainingRun._train_step  # pylint: disable=protected-access

        def step(self, iterator, stop=None):
            out = original(self, iterator, stop)
            if part in self.workdir:
                tf.py_function(maybe_signal, [], tf.int64)
            return out
        train.TrainingRun._train_step = step  # pylint: disable=protected-access
    binary, sys.argv = args[0], args
    runpy.run_path(binary, run_name="__main__")


if __name__ == "__main__":
    main()
