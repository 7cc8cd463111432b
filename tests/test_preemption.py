"""Tests for dwlt_tf.preemption: SIGTERM, SIGINT and SIGUSR1/2 stop runs with a checkpoint,
and the same command resumes them to the result of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from dwlt_tf import preemption, train

WORKER = os.path.join(REPO, "tests", "train_worker.py")
SIGNALLER = os.path.join(REPO, "tests", "signal_worker.py")


def test_a_stop_passes_through_code_that_catches_exception():
    # keras-tuner catches Exception around each trial; a stop must not become a failed trial.
    with pytest.raises(preemption.Preempted):
        try:
            raise preemption.Preempted(signal.SIGTERM, "at epoch 1 step 2", checkpointed=True)
        except Exception:  # pylint: disable=broad-except
            pytest.fail("Preempted was caught as an Exception")
    stop = preemption.Preempted(signal.SIGUSR1, "at epoch 1 step 2", checkpointed=True)
    assert stop.message() == ("stopped by SIGUSR1 at epoch 1 step 2; checkpoint written, "
                              "re-running the same command resumes")
    assert "another worker's stop request" in preemption.Preempted(None).message()


def test_graceful_turns_signals_into_a_request_and_restores_the_handlers():
    before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
    for signum in preemption.SIGNALS:
        with preemption.graceful():
            assert preemption.requested() is None
            os.kill(os.getpid(), signum)
            deadline = time.time() + 5
            while preemption.requested() is None and time.time() < deadline:
                time.sleep(0.01)
            assert preemption.requested() == signum
            with pytest.raises(preemption.Preempted, match="between cells"):
                preemption.check("between cells")
        assert preemption.requested() is None
    assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before


def test_a_second_signal_stops_at_once():
    code = ("import os, signal, time\nfrom dwlt_tf import preemption\n"
            "with preemption.graceful():\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(0.5)\n"
            "    assert preemption.requested() == signal.SIGTERM\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(30)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == -signal.SIGTERM, out.stderr[-2000:]
    assert "SIGTERM received: stopping at the next safe point" in out.stderr


def _worker(workdir, *extra, at=None, signal_name="TERM", env=None, wait=True,
            log="worker.log"):
    os.makedirs(workdir, exist_ok=True)
    prefix = [SIGNALLER, f"--at={at}", f"--signal={signal_name}"] if at else []
    # Validation in several batches, so that a signal can interrupt it.
    cmd = [sys.executable, *prefix, WORKER, f"--workdir={workdir}",
           "--checkpoint_every_steps=0", "--eval_batch_size=16", *extra]
    with open(os.path.join(workdir, log), "a") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT)
    proc.log = os.path.join(workdir, log)
    if wait:
        proc.wait(timeout=600)
    return proc


def _last_line(proc):
    with open(proc.log) as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1]


def _same_final_state(reference, resumed, final="final.npz"):
    a, b = np.load(reference / final), np.load(resumed / final)
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)

    def comparable(path):
        records = [json.loads(line) for line in open(path)]
        for r in records:
            r.pop("epoch_seconds")
        return records
    assert comparable(reference / train.METRICS_FILE) == comparable(resumed / train.METRICS_FILE)
    ra, rb = (json.loads((d / train.RESULT_FILE).read_text()) for d in (reference, resumed))
    assert (ra["best_sa"], ra["best_ra"]) == (rb["best_sa"], rb["best_ra"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    reference = tmp_path_factory.mktemp("reference")
    proc = _worker(reference)
    assert proc.returncode == 0, open(proc.log).read()[-3000:]
    return reference


@pytest.mark.parametrize("at,signal_name,where", [
    ("3", "TERM", "at epoch 1 step 3 of 5"),                  # mid-epoch
    ("1:eval", "INT", "at epoch 1, validating after its last step"),  # abandoned validation
    pytest.param("7", "USR1", "at epoch 2 step 2 of 5", marks=pytest.mark.slow),
])
def test_a_signal_mid_run_checkpoints_and_the_same_command_resumes_exactly(
        tmp_path, uninterrupted, at, signal_name, where):
    workdir = tmp_path / "stopped"
    proc = _worker(workdir, at=f"stopped:{at}", signal_name=signal_name)
    assert proc.returncode == preemption.EXIT_STATUS, open(proc.log).read()[-3000:]
    assert _last_line(proc) == (f"train_worker: stopped by SIG{signal_name} {where}; checkpoint "
                                "written, re-running the same command resumes")
    assert "Traceback" not in open(proc.log).read()
    assert not (workdir / train.RESULT_FILE).exists()
    resumed = _worker(workdir)  # the same command
    assert resumed.returncode == 0, open(resumed.log).read()[-3000:]
    _same_final_state(uninterrupted, workdir)


@pytest.mark.slow  # ~2 min: two TF workers; the single-process SIGTERM tests stay
def test_one_signalled_worker_stops_every_worker_after_the_same_step(tmp_path):
    from test_train import _free_ports  # pylint: disable=import-outside-toplevel
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}

    def launch(workdir, index, at=None):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        return _worker(workdir, "--strategy=multi_worker", "--epochs=1", "--data_rate=0.1",
                       at=at, env={"TF_CONFIG": tf_config}, wait=False,
                       log=f"worker-{index}.log")

    workdir = tmp_path / "stopped"
    procs = [launch(workdir, 0), launch(workdir, 1, at="stopped:2")]  # worker 1 only
    for proc in procs:
        proc.wait(timeout=600)
        assert proc.returncode == preemption.EXIT_STATUS, open(proc.log).read()[-3000:]
    assert _last_line(procs[1]).startswith("train_worker: stopped by SIGTERM at epoch 1 step 3")
    assert _last_line(procs[0]).startswith(
        "train_worker: stopped by another worker's stop request at epoch 1 step 3")
    procs = [launch(workdir, 0), launch(workdir, 1)]
    for proc in procs:
        proc.wait(timeout=600)
        assert proc.returncode == 0, open(proc.log).read()[-3000:]
    reference = tmp_path / "reference"
    ports[:] = _free_ports(2)
    cluster["worker"] = [f"127.0.0.1:{p}" for p in ports]
    procs = [launch(reference, 0), launch(reference, 1)]
    for proc in procs:
        proc.wait(timeout=600)
        assert proc.returncode == 0, open(proc.log).read()[-3000:]
    _same_final_state(reference, workdir, "final-worker-0.npz")
