"""Tests for dwlt_tf.cli and the trainers' boundary: which errors are one line, stale runs."""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
import tf_keras

from conftest import BUNDLED_CIFAR, REPO, snapshot
from dwlt_tf import (cli, convert, data, errors, export, identity, models, pruning,
                     pruning_wrapper, runs, tickets)


def test_only_the_projects_boundary_errors_become_one_line(capsys):
    for error in (errors.ConfigError("train.lr=-1: must be positive"),
                  data.DatasetNotFoundError("no cifar10 in /data"),
                  identity.RunIdentityError("workdir belongs to another run")):
        with pytest.raises(SystemExit) as exit_info:
            with cli.reported("transfer"):
                raise error
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == f"transfer: error: {error}\n"
    # A bug (here a bare ValueError, as a TF shape error would be) keeps its traceback.
    for bug in (ValueError("Shapes (2, 3) and (3, 2) are incompatible"),
                FileNotFoundError("internal file"), KeyError("val_sa")):
        with pytest.raises(type(bug)):
            with cli.reported("transfer"):
                raise bug


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_unknown_config_key_and_bad_flag_values_are_one_line(tmp_path):
    out = _run("trainers/transfer.py", "--config=configs/transfer.py:local",
               f"--pretrained={tmp_path}", f"--workdir={tmp_path / 'w'}",
               "--config.train.lrr=0.1")
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]  # (TensorFlow's start-up log lines precede it)
    assert last == ("transfer: error: bad --config override --config.train.lrr=0.1: unknown "
                    "key 'lrr' Did you mean \"lr\" instead of \"lrr\"?")
    assert "Traceback" not in out.stderr
    out = _run("trainers/imp.py", "--config=configs/nope.py", f"--pretrained={tmp_path}",
               f"--workdir={tmp_path / 'w'}")
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == (
        "imp: error: --config: [Errno 2] No such file or directory: 'configs/nope.py'")
    out = _run("trainers/convert_weights.py", f"--checkpoint={tmp_path / 'x.pth'}",
               f"--output={tmp_path / 'out'}", "--mean=0.5,abc,0.5", "--std=1,1,1")
    assert out.returncode == 2 and "--mean=0.5,abc,0.5: give 3 comma-separated numbers" \
        in out.stderr and "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def weights_and_ticket(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    tf_keras.utils.set_random_seed(0)
    model = models.build_resnet("resnet18", 5, "cifar", base_width=8)
    meta = {"source": "test", "source_sha256": "1" * 64, "format": "dwlt_tf",
            "arch": "resnet18", "stem": "cifar", "base_width": 8, "num_classes": 5,
            "mean": [0.5] * 3, "std": [0.25] * 3, "normalization": "test", "masked": False}
    weights = convert.save_converted(str(root / "weights"), convert.Converted(model, {}, meta))
    kernels = pruning_wrapper.get_kernels(pruning_wrapper.wrap(model))
    ticket = tickets.save(str(root / "ticket"), pruning.one_shot_magnitude_masks(kernels, 0.5),
                          {"source_sha256": "1" * 64})
    return weights, ticket, kernels


def _transfer(workdir, weights, ticket, *extra):
    return _run("trainers/transfer.py", "--config=configs/transfer.py:local",
                f"--pretrained={weights}", f"--workdir={workdir}",
                f"--config.dataset.path={BUNDLED_CIFAR}", "--config.dataset.data_rate=0.1",
                "--config.train.epochs=1", "--config.train.attack.steps=1",
                "--config.train.eval_attack.steps=1", "--config.train.verbose=0",
                *([f"--ticket={ticket}"] if ticket else []), *extra)


def test_rerun_into_a_used_workdir_refuses_other_settings(weights_and_ticket, tmp_path,
                                                          read_only_copy):
    weights, ticket, kernels = weights_and_ticket
    workdir = tmp_path / "run"
    first = _transfer(workdir, weights, ticket)
    assert first.returncode == 0, first.stderr[-3000:]
    # The finished run, re-run from a read-only copy (an archive): reported, nothing written.
    archive = read_only_copy(workdir, tmp_path / "archive")
    before = snapshot(archive)
    again = _transfer(archive, weights, ticket)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout == first.stdout.replace(str(workdir), str(archive))
    assert snapshot(archive) == before
    # Another learning rate: stopped before any work, naming the difference.
    out = _transfer(workdir, weights, ticket, "--config.train.lr=0.5")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "transfer: error: workdir" in out.stderr and "train.lr: 0.05 -> 0.5" in out.stderr
    assert "Traceback" not in out.stderr
    # The same transfer without its ticket (the dense model) is another run too.
    masks_sha = tickets.fingerprint(tickets.load(ticket)[0])
    out = _transfer(workdir, weights, None)
    assert out.returncode == 2 and f'ticket: "{masks_sha}" -> null' in out.stderr
    result = json.load(open(workdir / "result.json"))
    # --overwrite moves the old run aside and starts the new one.
    out = _transfer(workdir, weights, None, "--overwrite")
    assert out.returncode == 0, out.stderr[-3000:]
    (aside,) = glob.glob(f"{workdir}.replaced-*")
    assert json.load(open(os.path.join(aside, "result.json"))) == result
    assert identity.read(str(workdir))["ticket"] is None
    # Export sources: a finished run whose ticket changed on disk is not exported with
    # the other masks.
    run = runs.open_run(aside)
    shutil.rmtree(ticket)
    tickets.save(ticket, pruning.one_shot_magnitude_masks(kernels, 0.6))
    splits = data.load(run.dataset)
    with pytest.raises(identity.RunIdentityError, match=r"inputs of transfer run .* changed "
                                                        r"since it was trained:\n  ticket:"):
        export.export_run(run, str(tmp_path / "serving"), 1, splits=splits)
    assert not os.path.exists(tmp_path / "serving" / "1")
    with pytest.raises(runs.RunNotFoundError, match="not a transfer run"):
        runs.open_run(str(tmp_path))


@pytest.mark.slow  # suite time; also covered by test_study's baseline test
def test_baseline_ticket_binary_and_transfer_seeds(weights_and_ticket, tmp_path):
    weights, ticket, _ = weights_and_ticket
    imp_zeros = sum(int((~m).sum()) for m in tickets.load(ticket)[0].values())
    out = _run("trainers/prune.py", f"--pretrained={weights}", "--method=random",
               f"--like={ticket}", f"--output={tmp_path / 'random'}")
    assert out.returncode == 0, out.stderr[-3000:]
    masks, meta = tickets.load(str(tmp_path / "random"))
    assert meta["method"] == "random" and sum(int((~m).sum()) for m in masks.values()) == \
        imp_zeros
    out = _run("trainers/prune.py", f"--pretrained={weights}", "--method=omp",
               "--sparsity=1.5", f"--output={tmp_path / 'bad'}")
    assert out.returncode == 2 and "--sparsity=1.5: must be in [0, 1)" in out.stderr
    # Transfer once per seed: a run per seed, and their mean and spread.
    out = _transfer(tmp_path / "seeds", weights, str(tmp_path / "random"), "--config.seeds=1,2",
                    "--config.train.mode=standard")
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "seeds")) == ["seed_1", "seed_2"]
    assert "over seeds [1, 2]: test SA" in out.stdout
    seeds = [json.load(open(tmp_path / "seeds" / f"seed_{s}" / "run.json"))["identity"]
             ["train"].get("seed", 1) for s in (1, 2)]
    assert seeds == [1, 2]
