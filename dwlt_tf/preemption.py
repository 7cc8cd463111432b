"""Graceful stops: a scheduler's SIGTERM (or Ctrl-C, or a SIGUSR1/2 warning) ends a run
at the next safe point with a checkpoint instead of losing everything since the last one.

SLURM, Kubernetes and most schedulers send SIGTERM at preemption or the time limit and
SIGKILL after a grace period (30 s by default on SLURM); some send SIGUSR1/SIGUSR2 as a
warning first. Within `graceful()` (every trainer binary runs inside it, through
`cli.reported`), these signals only set a flag:

* the training loop (`train.py`) sees it after the current step -- the flag travels
  with the step's own cross-replica reduction, so every worker of a multi-worker run
  agrees on the same last step -- writes a checkpoint at that step and raises
  `Preempted`; an evaluation in progress is abandoned between batches;
* other long loops (the study between cells, tuning between trials, the audit between
  attacks) call `check()`;
* the binary prints one line and exits with `EXIT_STATUS` (75, sysexits' EX_TEMPFAIL:
  "try again later"); re-running the same command resumes from the checkpoint.

A second signal while stopping restores the default handlers and re-sends itself: the
process ends at once (Ctrl-C twice).

Why not TensorFlow's `PreemptionCheckpointHandler`: it watches SIGTERM only, exits the
process itself and numbers checkpoints its own way; the runs here need SIGINT/SIGUSR*,
resumption at the exact step (with the epoch's running totals) and a one-line message.

`Preempted` derives from BaseException, like KeyboardInterrupt, so that libraries
catching `Exception` around user code (keras-tuner marks such trials failed) let it
through.
"""
import contextlib
import os
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
EXIT_STATUS = 75  # EX_TEMPFAIL

_STATE = {"signal": None}
_LOCK = threading.Lock()


class Preempted(BaseException):
    """A stop requested by a signal; `where` says how far the run got."""

    def __init__(self, signum, where="", checkpointed=False):
        self.signum = signum
        self.where = where
        self.checkpointed = checkpointed
        super().__init__(self.message())

    @property
    def signal_name(self):
        if self.signum is None:  # a multi-worker run whose other worker was signalled
            return "another worker's stop request"
        if isinstance(self.signum, str):  # a request made by code (`request(reason)`)
            return self.signum
        return signal.Signals(self.signum).name

    def message(self):
        where = f" {self.where}" if self.where else ""
        saved = "; checkpoint written," if self.checkpointed else ";"
        return f"stopped by {self.signal_name}{where}{saved} re-running the same command resumes"


def requested():
    """The number of the signal that asked this process to stop, or None."""
    return _STATE["signal"]


def request(signum=signal.SIGTERM):
    """Asks for a graceful stop as the signal `signum` would (a signal number, or a reason
    such as "losing the lease of ..." for stops requested by code)."""
    with _LOCK:
        if _STATE["signal"] is None:
            _STATE["signal"] = signum


def clear():
    """Forgets a stop request (e.g. after a cell that was stopped has been handled)."""
    with _LOCK:
        _STATE["signal"] = None


def check(where=""):
    """Raises `Preempted` (nothing checkpointed) if a stop was requested."""
    signum = requested()
    if signum is not None:
        raise Preempted(signum, where)


def _handler(signum, frame):
    del frame
    if _STATE["signal"] is not None:  # the second signal: stop now
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    request(signum)
    name = signal.Signals(signum).name
    # os.write: print() is not reentrant and the handler may interrupt a print.
    os.write(2, f"\n{name} received: stopping at the next safe point (after the current "
                f"training step) with a checkpoint; send it again to stop at once\n".encode())


@contextlib.contextmanager
def graceful(signals=SIGNALS, chain=False):
    """Within the block, `signals` request a graceful stop (see module docstring).

    With `chain`, a stop that leaves the block as `Preempted` is then handed to the
    handler the signal had before (e.g. submitit's, which requeues the job): the run has
    checkpointed first. Only the main thread may install handlers; elsewhere the block
    changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    clear()
    previous = {sig: signal.signal(sig, _handler) for sig in signals}
    try:
        yield
    except Preempted as stop:
        _restore(previous)
        handler = previous.get(stop.signum) if isinstance(stop.signum, int) else None
        if chain and callable(handler):
            handler(stop.signum, None)
        raise
    finally:
        _restore(previous)
        clear()


def _restore(previous):
    for sig, handler in previous.items():
        signal.signal(sig, handler)
