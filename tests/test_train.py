"""Tests for dwlt_tf.train: modes, distribution, resume after SIGKILL, NaN handling."""
import dataclasses
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from conftest import BUNDLED_CIFAR, REPO, mirrored_strategy
from dwlt_tf import attacks, data, evaluate, identity, models, pruning, pruning_wrapper, train

WORKER = os.path.join(REPO, "tests", "train_worker.py")
SMALL_PGD = attacks.Attack(8 / 255, 2 / 255, 2)


@pytest.fixture(scope="module")
def splits():
    return data.load(data.DataSpec("imagefolder", path=BUNDLED_CIFAR, image_size=32,
                                   augment="cifar", stats="cifar10", classes=(0, 1, 2, 3, 4)))


def _model_fn(splits, seed=0, sync_batchnorm=False, sparsity=0.5):
    def build():
        tf_keras.utils.set_random_seed(seed)
        model = pruning_wrapper.wrap(models.build_resnet(
            "resnet18", 5, "cifar", *splits.spec.mean_std, base_width=8,
            sync_batchnorm=sync_batchnorm))
        pruning_wrapper.set_masks(model, pruning.global_magnitude_masks(
            pruning_wrapper.get_kernels(model), None, sparsity))
        return model
    return build


@pytest.mark.parametrize("mode", train.MODES)
def test_one_epoch_of_each_mode_improves_training_accuracy(tmp_path, splits, mode):
    model_fn = _model_fn(splits, seed=1, sparsity=0.2)
    before = evaluate.evaluate(model_fn(), splits, "train", 300, attack=None).sa
    spec = train.TrainSpec(mode=mode, epochs=1, batch_size=32, lr=0.01,
                           attack=SMALL_PGD if mode == "pgd" else None, eval_attack=None,
                           test=False, verbose=0)
    result = train.fit(model_fn, splits, spec, str(tmp_path))
    after = evaluate.evaluate(result.model, splits, "train", 300, attack=None).sa
    assert after > before + 5, f"{mode}: training accuracy {before:.1f}% -> {after:.1f}%"
    with open(tmp_path / train.METRICS_FILE) as f:
        record = json.loads(f.readline())
    assert record["epoch"] == 0 and "val_sa" in record and record["sparsity"] == pytest.approx(
        0.2, abs=1e-4)
    assert os.path.isdir(tmp_path / "tensorboard") and os.listdir(tmp_path / "tensorboard")


@pytest.mark.parametrize("mode", ["standard", pytest.param("pgd", marks=pytest.mark.slow)])
def test_mirrored_two_replicas_equals_default_strategy(tmp_path, mode):
    # 50 images: one full batch of 32 and a short one of 18, each split across replicas.
    small = data.load(data.DataSpec("imagefolder", path=BUNDLED_CIFAR, image_size=32,
                                    augment="cifar", stats="cifar10", classes=(0, 1, 2, 3, 4),
                                    data_rate=0.06))
    assert small.num_train == 50
    # Synchronized BatchNorm: per-replica batch statistics would (legitimately) differ.
    # float64: in float32 this small net's early-layer gradients carry ~0.3 % rounding
    # noise (torch float32 vs float64 alike), which PGD's sign() and SGD amplify; in
    # float64 the two strategies must agree to rounding.
    spec = train.TrainSpec(mode=mode, epochs=1, batch_size=32, lr=0.05,
                           attack=SMALL_PGD if mode == "pgd" else None, eval_attack=None,
                           test=False, verbose=0, precision="float64")
    model_fn = _model_fn(small, seed=2, sync_batchnorm=True)
    with train.precision_policy("float64"):
        initial = [w.numpy() for w in model_fn().trainable_weights]
    single = train.fit(model_fn, small, spec, str(tmp_path / "default"))
    mirrored = train.fit(model_fn, small, spec, str(tmp_path / "mirrored"),
                         mirrored_strategy())
    for w0, a, b in zip(initial, single.model.trainable_weights,
                        mirrored.model.trainable_weights):
        moved = np.linalg.norm(a.numpy() - w0)
        assert moved > 0, a.name
        assert np.linalg.norm(a.numpy() - b.numpy()) <= 1e-6 * moved, a.name
    for a, b in zip(single.model.weights, mirrored.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-7, atol=1e-9, err_msg=a.name)
    assert single.final["train_loss"] == pytest.approx(mirrored.final["train_loss"], rel=1e-7)


def test_finished_run_is_not_recomputed(tmp_path, splits):
    spec = train.TrainSpec(epochs=1, batch_size=64, lr=0.05, eval_attack=None, verbose=0)
    first = train.fit(_model_fn(splits), splits, spec, str(tmp_path))
    mtime = os.path.getmtime(tmp_path / train.RESULT_FILE)
    again = train.fit(_model_fn(splits, seed=9), splits, spec, str(tmp_path))
    assert os.path.getmtime(tmp_path / train.RESULT_FILE) == mtime
    assert (again.best_sa, again.best_ra) == (first.best_sa, first.best_ra)
    for a, b in zip(first.model.weights, again.model.weights):  # final weights restored
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Result-neutral settings belong to the same run: reported, not retrained.
    neutral = dataclasses.replace(spec, verbose=1, eval_batch_size=17, log_every_steps=3,
                                  checkpoint_every_steps=5)
    assert train.fit(_model_fn(splits), splits, neutral, str(tmp_path)).best_sa == first.best_sa
    # Another setting, or other data, is another run: refused before any work, naming
    # what differs; overwrite moves the old run aside (never deletes it).
    with pytest.raises(identity.RunIdentityError, match=r"train\.lr: 0\.05 -> 0\.5\n"):
        train.fit(_model_fn(splits), splits, dataclasses.replace(spec, lr=0.5), str(tmp_path))
    fewer = data.load(dataclasses.replace(splits.spec, data_rate=0.5))
    with pytest.raises(identity.RunIdentityError, match=r"dataset\.spec\.data_rate: "
                                                        r"\(default\) -> 0\.5"):
        train.fit(_model_fn(fewer), fewer, spec, str(tmp_path))
    assert os.path.getmtime(tmp_path / train.RESULT_FILE) == mtime
    legacy = shutil.copytree(tmp_path, tmp_path.parent / f"{tmp_path.name}-legacy")
    os.remove(legacy / identity.IDENTITY_FILE)  # as an older dwlt_tf left its runs
    with pytest.raises(identity.RunIdentityError, match="but no run record"):
        train.fit(_model_fn(splits), splits, spec, str(legacy))
    train.fit(_model_fn(splits), splits, dataclasses.replace(spec, epochs=1, lr=0.5),
              str(tmp_path), overwrite=True)
    (aside,) = glob.glob(str(tmp_path) + ".replaced-*")
    assert os.path.getmtime(os.path.join(aside, train.RESULT_FILE)) == mtime
    assert json.load(open(tmp_path / "run.json"))["identity"]["train"]["lr"] == 0.5


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, splits):
    spec = train.TrainSpec(epochs=2, batch_size=32, lr=1e12, weight_decay=0.0,
                           eval_attack=None, checkpoint_every_steps=1, verbose=0)
    with pytest.raises(train.NonFiniteLossError, match="last good checkpoint"):
        train.fit(_model_fn(splits), splits, spec, str(tmp_path))
    assert not os.path.exists(tmp_path / train.RESULT_FILE)
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    assert latest is not None
    model = _model_fn(splits)()
    tf.train.Checkpoint(model=model).read(latest).expect_partial()
    assert all(np.all(np.isfinite(w.numpy())) for w in model.weights)


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="trades"), "train.mode='trades'"),
    (dict(epochs=0), "train.epochs=0: must be a positive int"),
    (dict(epochs=-3), "train.epochs=-3"),
    (dict(lr=0.0), "train.lr=0.0: must be a number in \\(0.0, inf\\)"),
    (dict(milestones=(50, 25)), "train.milestones"),
    (dict(precision="int8"), "train.precision='int8'"),
    (dict(mode="pgd", attack=None, eval_attack=None, batch_size=0), "train.batch_size=0"),
])
def test_bad_specs_fail_before_any_work(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train.TrainSpec(**kwargs)


def test_bad_runs_fail_before_any_work(tmp_path, splits):
    spec = train.TrainSpec(batch_size=33, verbose=0)
    with pytest.raises(ValueError, match="batch_size=33 is not divisible by the 2 replicas"):
        train.fit(_model_fn(splits), splits, spec, str(tmp_path / "a"),
                  mirrored_strategy())
    with pytest.raises(ValueError, match="attack.eps=2.0: must be a number in"):
        train.TrainSpec(mode="pgd", attack=attacks.Attack(2.0, 0.1, 3))
    empty = dataclasses.replace(splits, train=data.Split(splits.train.table,
                                                          splits.train.positions[:0]))
    with pytest.raises(ValueError, match="training split is empty"):
        train.fit(_model_fn(splits), empty, train.TrainSpec(verbose=0), str(tmp_path / "b"))
    assert not os.path.exists(tmp_path / "a" / "checkpoints")


def _run_worker(workdir, *extra, env=None, wait=True, log="worker.log"):
    # Output goes to a file: two workers writing into pipes that nobody drains while
    # the test waits on the other one would block each other's collectives.
    os.makedirs(workdir, exist_ok=True)
    cmd = [sys.executable, WORKER, f"--workdir={workdir}", *extra]
    with open(os.path.join(workdir, log), "a") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT)
    proc.log = os.path.join(workdir, log)
    if wait:
        _wait(proc)
    return proc


def _wait(proc):
    proc.wait(timeout=600)
    with open(proc.log) as f:
        assert proc.returncode == 0, f.read()[-3000:]


def _comparable(path):
    with open(path) as f:
        records = [json.loads(line) for line in f]
    for r in records:
        r.pop("epoch_seconds")
    return records


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    _run_worker(reference)
    proc = _run_worker(killed, "--slow_ms=400", wait=False)
    state = killed / "checkpoints" / "checkpoint"
    deadline = time.time() + 300
    while time.time() < deadline:
        if state.exists() and "ckpt-2" in state.read_text():  # step 2 of 5 in epoch 1
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the worker never wrote its step-2 checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / train.RESULT_FILE).exists()
    _run_worker(killed)  # the same command resumes
    a, b = np.load(reference / "final.npz"), np.load(killed / "final.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert _comparable(reference / train.METRICS_FILE) == _comparable(killed / train.METRICS_FILE)
    ra, rb = (json.loads((d / train.RESULT_FILE).read_text()) for d in (reference, killed))
    assert (ra["best_sa"], ra["best_ra"]) == (rb["best_sa"], rb["best_ra"])
    assert (reference / "test_records.json").read_bytes() == \
        (killed / "test_records.json").read_bytes()
    # Killed right after writing its per-example records, before result.json: the same
    # command finishes the run with the same records and results.
    late = tmp_path / "late"
    proc = _run_worker(late, "--die_after_records", wait=False)
    proc.wait(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    assert (late / "test_records.json").exists() and not (late / train.RESULT_FILE).exists()
    _run_worker(late)
    assert (late / "test_records.json").read_bytes() == \
        (reference / "test_records.json").read_bytes()
    rc = json.loads((late / train.RESULT_FILE).read_text())
    assert (rc["best_sa"], rc["best_ra"]) == (ra["best_sa"], ra["best_ra"])


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow  # ~2 min: two TF_CONFIG workers and two SLURM-environment workers
def test_two_worker_multi_worker_mirrored_strategy(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(_run_worker(tmp_path, "--strategy=multi_worker", "--epochs=1",
                                 "--data_rate=0.1", "--record_indices",
                                 env={"TF_CONFIG": tf_config}, wait=False,
                                 log=f"worker-{index}.log"))
    for proc in procs:
        _wait(proc)
    a, b = np.load(tmp_path / "final-worker-0.npz"), np.load(tmp_path / "final-worker-1.npz")
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert (tmp_path / train.RESULT_FILE).exists()
    assert not any(name.startswith(".worker-") for name in os.listdir(tmp_path))
    # Each worker read a disjoint half of the epoch; together, exactly the epoch.
    num_train = len(data.load(data.DataSpec("imagefolder", path=BUNDLED_CIFAR, image_size=32,
                                            augment="cifar", classes=(0, 1, 2, 3, 4),
                                            data_rate=0.1)).train)
    read = [sorted(i for _, batch in json.load(open(tmp_path / f"indices-worker-{w}.json"))
                   for i in batch) for w in (0, 1)]
    assert not set(read[0]) & set(read[1])
    assert sorted(read[0] + read[1]) == list(range(num_train))
    assert abs(len(read[0]) - len(read[1])) <= 1
    # The same two workers as the two tasks of one SLURM job step on this host: the
    # strategy comes from TensorFlow's SlurmClusterResolver (no TF_CONFIG), same results.
    port = _free_ports(1)[0]
    while not all(_port_free(p) for p in (port, port + 1)):
        port = _free_ports(1)[0]
    slurm = tmp_path / "slurm"
    procs = []
    for rank in range(2):
        env = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": str(rank), "SLURM_STEP_NUM_TASKS": "2",
               "SLURM_STEP_NODELIST": "localhost", "SLURM_STEP_TASKS_PER_NODE": "2",
               "DWLT_SLURM_PORT_BASE": str(port)}
        procs.append(_run_worker(slurm, "--strategy=auto", "--epochs=1", "--data_rate=0.1",
                                 env=env, wait=False, log=f"task-{rank}.log"))
    for proc in procs:
        _wait(proc)
    c = np.load(slurm / "final-worker-0.npz")
    for key in a.files:
        np.testing.assert_array_equal(a[key], c[key], err_msg=key)


def _port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_with_float32_masters_and_zero_masks(tmp_path, precision):
    small = data.load(data.DataSpec("imagefolder", path=BUNDLED_CIFAR, image_size=32,
                                    augment="cifar", stats="cifar10", classes=(0, 1, 2, 3, 4),
                                    data_rate=0.1))
    captured = {}

    def model_fn():
        model = _model_fn(small, seed=3)()
        captured["masks"] = pruning_wrapper.get_masks(model)
        return model

    spec = train.TrainSpec(mode="pgd", epochs=1, batch_size=32, lr=0.05, attack=SMALL_PGD,
                           eval_attack=SMALL_PGD, precision=precision, verbose=0)
    result = train.fit(model_fn, small, spec, str(tmp_path))
    assert np.isfinite(result.final["train_loss"])
    compute = "bfloat16" if precision == "mixed_bfloat16" else "float16"
    assert result.model.get_layer("normalize").dtype == "float32"
    for name, wrapper in pruning_wrapper.wrappers(result.model).items():
        assert wrapper.kernel.dtype == tf.float32  # float32 master weights
        assert wrapper.compute_dtype == compute
        assert not np.any(wrapper.kernel.numpy()[~captured["masks"][name]])
    logits = result.model(np.zeros((2, 32, 32, 3), np.float32))
    assert logits.dtype == tf.float32
    assert tf_keras.mixed_precision.global_policy().name == "float32"  # restored afterwards


def test_test_records_explain_the_reported_numbers_and_are_backfilled(tmp_path, splits):
    from dwlt_tf import records  # pylint: disable=import-outside-toplevel
    spec = train.TrainSpec(epochs=2, batch_size=64, lr=0.05, eval_attack=SMALL_PGD, verbose=0,
                           eval_batch_size=200)
    result = train.fit(_model_fn(splits), splits, spec, str(tmp_path))
    kept = records.read(str(tmp_path))  # written with the result
    assert kept.count == splits.num_test and kept.order == splits.example_order("test")
    for which in ("sa", "ra"):
        best = result.best(which)
        assert kept.accuracy(f"best_{which}/clean") == best.test_sa
        assert kept.accuracy(f"best_{which}/robust") == best.test_ra
    # A run finished before records existed gets them from its best checkpoints -- the
    # same bits, since evaluation is deterministic -- without training again.
    os.unlink(records.path_in(str(tmp_path)))
    mtime = os.path.getmtime(tmp_path / train.RESULT_FILE)
    train.fit(_model_fn(splits), splits, spec, str(tmp_path))
    back = records.read(str(tmp_path))
    assert os.path.getmtime(tmp_path / train.RESULT_FILE) == mtime
    for name, values in kept.correct.items():
        assert np.array_equal(back.correct[name], values), name
    # A result the checkpoints do not reproduce gets no records that would not explain it.
    os.unlink(records.path_in(str(tmp_path)))
    stored = json.load(open(tmp_path / train.RESULT_FILE))
    stored["best_sa"]["test_sa"] += 1.0
    json.dump(stored, open(tmp_path / train.RESULT_FILE, "w"))
    with pytest.raises(RuntimeError, match="does not reproduce"):
        train.fit(_model_fn(splits), splits, spec, str(tmp_path))
    assert not records.exists(str(tmp_path))
