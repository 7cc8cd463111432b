"""Tests for dwlt_tf.tune: keras-tuner over the transfer loop."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tf_keras

from conftest import REPO, load_config, snapshot
from dwlt_tf import config as cfg
from dwlt_tf import convert, identity, models, tune

CONFIG = os.path.join(REPO, "configs", "tune.py")


def _config(**space_overrides):
    config = load_config("tune", "local")
    config.dataset.path = os.path.join(REPO, "data", "cifar10_jpeg_small")
    config.dataset.data_rate = 0.3
    config.train.update(dict(eval_attack={}, select_ra=False, batch_size=32))
    config.tune.update(dict(max_trials=3))
    config.tune.space = {"lr": {"type": "float", "min": 0.005, "max": 0.05, "sampling": "log"},
                         "epochs": {"type": "int", "min": 1, "max": 2}}
    config.tune.space.update(space_overrides)
    return config


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tf_keras.utils.set_random_seed(0)
    model = models.build_resnet("resnet18", 5, "cifar", base_width=8)
    path = str(tmp_path_factory.mktemp("weights") / "tiny")
    meta = {"source": "test", "source_sha256": "0" * 64, "format": "dwlt_tf", "arch": "resnet18",
            "stem": "cifar", "base_width": 8, "num_classes": 5, "mean": [0.5] * 3,
            "std": [0.25] * 3, "normalization": "test", "masked": False}
    convert.save_converted(path, convert.Converted(model, {}, meta))
    return path


def test_random_search_writes_table_and_reproducible_overrides(tmp_path, pretrained):
    config = _config()
    dataset = cfg.data_spec(config.dataset)
    spec = cfg.train_spec(config.train)
    rows, best, tuner = tune.search(pretrained, None, dataset, spec, config.tune, str(tmp_path))
    assert len(rows) == 3 and len(tuner.trials_run) == 3
    with open(tmp_path / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and {"trial", "score", "val_sa", "lr", "epochs"} <= set(table[0])
    best_row = max(rows, key=lambda r: r["score"])
    flags_text = (tmp_path / "best.flags").read_text()
    assert f"--config.train.lr={best['lr']}" in flags_text
    # trainers/transfer.py takes the flagfile and reproduces the best validation metric.
    rerun = tmp_path / "rerun"
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "trainers", "transfer.py"),
         f"--config={os.path.join(REPO, 'configs', 'transfer.py')}:local",
         f"--pretrained={pretrained}", f"--workdir={rerun}",
         f"--config.dataset.path={config.dataset.path}", "--config.dataset.data_rate=0.3",
         "--config.train.eval_attack={}", "--config.train.select_ra=False",
         "--config.train.batch_size=32", "--config.train.verbose=0",
         "--config.train.test=False", f"--flagfile={tmp_path / 'best.flags'}"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((rerun / "result.json").read_text())
    assert result["spec"]["lr"] == best["lr"] and result["spec"]["epochs"] == best["epochs"]
    assert result["best_sa"]["val_sa"] == pytest.approx(best_row["val_sa"])
    assert result["best_sa"]["test_sa"] is None  # tuning never touches the test split
    # The workdir belongs to this search: another search space is refused before any
    # trial, naming the difference.
    other = _config(lr={"type": "float", "min": 0.001, "max": 0.05, "sampling": "log"})
    with pytest.raises(identity.RunIdentityError, match=r"tune\.space\.lr\.min: 0\.005 -> 0\.001"):
        tune.search(pretrained, None, dataset, spec, other.tune, str(tmp_path))


@pytest.mark.parametrize("space,objective,match", [
    ({"lr": {"type": "float", "min": 0.1, "max": 0.1}}, "val_sa", r"tune.space.lr: empty range"),
    ({"dropout": {"type": "float", "min": 0.1, "max": 0.5}}, "val_sa",
     r"tune.space.dropout: unknown hyperparameter"),
    ({"lr": {"type": "float", "min": 0.01, "max": 0.1}}, "val_ra",
     r"tune.objective='val_ra' needs validation RA"),
    ({}, "val_sa", r"tune.space: empty"),
])
def test_bad_search_spaces_fail_before_the_first_trial(tmp_path, pretrained, space, objective,
                                                       match):
    config = _config()
    config.tune.space = space
    config.tune.objective = objective
    with pytest.raises(cfg.ConfigError, match=match):
        tune.search(pretrained, None, cfg.data_spec(config.dataset),
                    cfg.train_spec(config.train), config.tune, str(tmp_path))
    assert not os.path.exists(tmp_path / "trials")


@pytest.mark.slow  # suite time; also covered by the finished-search and distributed tests
def test_killed_search_resumes_with_only_the_remaining_trials(tmp_path, pretrained,
                                                              read_only_copy):
    workdir = tmp_path / "search"
    cmd = [sys.executable, os.path.join(REPO, "trainers", "tune.py"),
           f"--config={CONFIG}:local", f"--pretrained={pretrained}", f"--workdir={workdir}",
           f"--config.dataset.path={os.path.join(REPO, 'data', 'cifar10_jpeg_small')}",
           "--config.dataset.data_rate=0.3", "--config.train.batch_size=32",
           "--config.train.select_ra=False", "--config.tune.max_trials=3"]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd + ["--config.tune.space.epochs.min=2"], stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 400
    finished = []
    while time.time() < deadline and proc.poll() is None:
        trials = workdir / "trials"
        finished = [t for t in (os.listdir(trials) if trials.exists() else [])
                    if (trials / t / "result.json").exists()]
        if finished:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(finished) == 1, (tmp_path / "first.log").read_text()[-2000:]
    done_before = set(finished)
    second = subprocess.run(cmd + ["--config.tune.space.epochs.min=2"], capture_output=True,
                            text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    with open(workdir / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3
    completed = {r["trial"] for r in table if "COMPLETED" in r["status"]}
    assert done_before <= completed and len(completed) == 3
    # The finished trial was not run again: its result file is untouched.
    (trial,) = done_before
    assert (workdir / "trials" / trial / "result.json").stat().st_mtime < \
        (workdir / "trials.csv").stat().st_mtime
    # The finished search from a read-only copy: its table reported, nothing written.
    archive = read_only_copy(workdir, tmp_path / "archive")
    before = snapshot(archive)
    cmd[cmd.index(f"--workdir={workdir}")] = f"--workdir={archive}"
    third = subprocess.run(cmd + ["--config.tune.space.epochs.min=2"], capture_output=True,
                           text=True, timeout=900)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "best:" in third.stdout and snapshot(archive) == before


def _free_port():
    import socket  # pylint: disable=import-outside-toplevel
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_tuning_chief_and_two_workers_all_exit_cleanly(tmp_path, pretrained):
    """keras-tuner's own distributed mode: a chief serving the oracle, two workers."""
    workdir = tmp_path / "search"
    cmd = [sys.executable, os.path.join(REPO, "trainers", "tune.py"), f"--config={CONFIG}:local",
           f"--pretrained={pretrained}", f"--workdir={workdir}",
           f"--config.dataset.path={os.path.join(REPO, 'data', 'cifar10_jpeg_small')}",
           "--config.dataset.data_rate=0.1", "--config.train.batch_size=32",
           "--config.train.select_ra=False", "--config.train.eval_attack={}",
           "--config.train.epochs=1", "--config.tune.max_trials=2",
           "--config.tune.space={'lr': {'type': 'float', 'min': 0.005, 'max': 0.05}}"]
    env = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1",
           "KERASTUNER_ORACLE_PORT": str(_free_port())}
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("chief", "tuner1", "tuner2")}
    procs = {}
    for name, log in logs.items():
        procs[name] = subprocess.Popen(cmd, env={**env, "KERASTUNER_TUNER_ID": name},
                                       stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        if name == "chief":
            time.sleep(3)  # let the oracle's server start
    for name, proc in procs.items():
        proc.wait(timeout=900)
        text = (tmp_path / f"{name}.log").read_text()
        assert proc.returncode == 0, (name, text[-3000:])
        assert "Traceback" not in text, (name, text[-3000:])
    with open(workdir / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 and all("COMPLETED" in r["status"] for r in table)
    assert list(table[0])[:3] == ["trial", "status", "score"]
    assert (workdir / "best.flags").read_text().startswith("# best trial ")
    ran = [(tmp_path / f"{w}.log").read_text() for w in ("tuner1", "tuner2")]
    assert all("the chief writes" in text for text in ran)
    assert sorted(os.listdir(workdir / "trials")) == sorted(r["trial"] for r in table)


@pytest.mark.parametrize("key,value,match", [
    ("max_trials", 0, r"tune.max_trials=0: must be a positive int"),
    ("max_trials", -1, r"tune.max_trials=-1: must be a positive int"),
    ("max_epochs", 0, r"tune.max_epochs=0: must be a positive int"),
    ("seed", -2, r"tune.seed=-2: must be an int in \[0, 4294967295\]"),
    ("weights", {"sa": -1.0}, r"tune.weights=\{'sa': -1.0\}: give"),
])
def test_bad_tune_settings_fail_before_the_workdir_is_claimed(tmp_path, pretrained, key, value,
                                                              match):
    config = _config()
    config.tune[key] = value
    with pytest.raises(cfg.ConfigError, match=match):
        tune.search(pretrained, None, cfg.data_spec(config.dataset),
                    cfg.train_spec(config.train), config.tune, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")
