"""Tests for the study: configs, validation, double-win logic, a tiny study end to end."""
import collections
import csv
import dataclasses
import glob
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import warnings
from unittest import mock

import numpy as np
import pytest

from conftest import BUNDLED_CIFAR, REPO, load_config, snapshot
from dwlt_tf import config as cfg
from dwlt_tf import (cells, convert, data, export, leases, pipeline, preemption, pruning,
                     pruning_wrapper, records, report, runs, stages, study, tickets, train,
                     transfer, verdicts)

TOLERANCE = verdicts.Rule("tolerance")

SIGNALLER = os.path.join(REPO, "tests", "signal_worker.py")


# ----------------------------------------------------------------- paper presets

def test_imp_presets_are_the_references():
    for variant, mode in (("imagenet_std", "standard"), ("imagenet_adv", "pgd")):
        config = load_config("imp", variant)
        spec = cfg.train_spec(config.train)
        assert (spec.mode, spec.epochs, spec.lr, spec.weight_decay, spec.batch_size,
                spec.momentum, spec.schedule, spec.warmup_epochs) == (
            mode, 30, 0.0005, 1e-4, 2048, 0.9, "constant", 0)
        # The reference saves tickets 1-19 (570 epochs of 30-epoch rounds).
        assert (cfg.imp_spec(config.imp).fraction, cfg.imp_spec(config.imp).rounds) == (0.2, 19)
        if mode == "pgd":
            assert spec.attack.eps == 8 / 255 and spec.attack.steps == 3
            assert spec.attack.step_size == pytest.approx(16 / (3 * 255))
        assert cfg.data_spec(config.dataset).name == "imagenet"


def test_transfer_presets_are_the_references():
    pgd20 = (8 / 255, 2 / 255, 20)
    std = cfg.train_spec(load_config("transfer", "std_cifar10").train)
    assert (std.mode, std.lr, std.batch_size, std.epochs, std.milestones, std.gamma,
            std.weight_decay, std.momentum, std.warmup_epochs) == (
        "standard", 0.001, 64, 150, (50, 100), 0.1, 5e-4, 0.9, 0)
    for dataset in ("cifar10", "cifar100"):
        adv = cfg.train_spec(load_config("transfer", f"adv_{dataset}").train)
        assert (adv.mode, adv.lr, adv.batch_size, adv.epochs, adv.milestones, adv.weight_decay,
                adv.warmup_epochs, adv.schedule) == (
            "pgd", 0.1, 128, 100, (50, 75), 5e-4, 0, "multistep")
        assert (adv.attack.eps, adv.attack.step_size, adv.attack.steps) == (8 / 255, 2 / 255, 10)
        assert (adv.eval_attack.eps, adv.eval_attack.step_size, adv.eval_attack.steps) == pgd20
    svhn = cfg.train_spec(load_config("transfer", "adv_svhn").train)
    # main_adv_eval_svhn.py validates every epoch (CIFAR's script from epoch 45 on).
    assert (svhn.lr, svhn.epochs, svhn.schedule, svhn.eval_start_epoch) == (0.01, 80, "cosine", 0)
    assert cfg.train_spec(load_config("transfer", "adv_cifar10").train).eval_start_epoch == 45
    for variant in ("std_cifar10", "adv_svhn"):
        spec = cfg.data_spec(load_config("transfer", variant).dataset)
        assert (spec.image_size, spec.augment, spec.data_rate) == (224, "imagenet", 1.0)


def _fake_converted(path, arch="resnet50", stem="imagenet", base_width=64):
    """A converted-weights directory's metadata (all the study's plan reads)."""
    path.mkdir()
    (path / "converted.json").write_text(json.dumps(
        {"arch": arch, "stem": stem, "base_width": base_width, "source_sha256": "0" * 64,
         "num_classes": 1000, "mean": [0.5] * 3, "std": [0.25] * 3}))
    return path


def test_every_config_variant_validates(tmp_path):
    weights = _fake_converted(tmp_path / "weights")
    for name, variants in (("imp", ("imagenet_std", "imagenet_adv", "local")),
                           ("transfer", ("std_cifar10", "std_cifar100", "std_svhn",
                                         "adv_cifar10", "adv_cifar100", "adv_svhn", "local"))):
        for variant in variants:
            config = load_config(name, variant)
            cfg.train_spec(config.train)
            cfg.data_spec(config.dataset)
    paper = load_config("study", "paper")
    for name in paper.pretrainings:
        paper.pretrainings[name].path = str(weights)
    plan = study.study_spec(paper)
    assert plan.ticket_rounds == [6, 7, 8, 10, 11]
    assert len(plan.datasets) == 9  # 3 datasets x data rates 1, 0.1, 0.01
    assert plan.transfer["adversarial:svhn"].schedule == "cosine"
    assert plan.pretrainings["adversarial"].imp.mode == "pgd"
    assert plan.pretrainings["standard"].imp.mode == "standard"
    for variant in ("quickstart", "audit", "tiny", "cifar", "cifar_jpeg", "cifar_budget",
                    "cifar_budget_jpeg"):
        spec = study.study_spec(load_config("study", variant))
        assert (spec.report.rule, spec.report.margin) == ("paired", 1.0), variant
    cifar = study.study_spec(load_config("study", "cifar"))
    assert (cifar.source.name, cifar.source.classes, cifar.datasets[0].classes) == (
        "cifar10", (0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
    assert cifar.seeds == [1, 2, 3] and [d.data_rate for d in cifar.datasets] == [0.1, 0.5]
    assert cifar.methods == ["imp", "omp", "random"] and cifar.audit.version == "standard"
    assert study.study_spec(load_config("study", "cifar_jpeg")).source.name == "imagefolder"
    # The budget variant changes only the transfers' seeds and splits and the audit's size:
    # its pre-trainings, IMP and baselines are cifar's cells (same identities).
    budget = study.study_spec(load_config("study", "cifar_budget"))
    assert budget.seeds == [1, 2] and budget.audit.examples == 250
    assert [(d.test_examples, d.val_fraction) for d in budget.datasets] == [(2500, 0.02)] * 2
    assert (budget.model, budget.source, budget.pretrainings, budget.imp) == (
        cifar.model, cifar.source, cifar.pretrainings, cifar.imp)
    assert (budget.methods, budget.baseline_rounds, budget.pruning_seed) == (
        cifar.methods, cifar.baseline_rounds, cifar.pruning_seed)
    assert budget.transfer == cifar.transfer and budget.ticket_rounds == cifar.ticket_rounds
    audited = study.study_spec(load_config("study", "audit")).audit
    assert (audited.examples, audited.subset) == (500, "spread")  # 100 of each class
    assert study.study_spec(load_config("study", "quickstart")).audit is None
    paper.tickets = ("all",)  # what --config.tickets=all hands over: every saved round
    everything = study.study_spec(paper)
    assert everything.ticket_rounds == list(range(1, 12)) and everything.report.rule == "paired"
    assert everything.seeds == [1, 2, 3] and everything.methods == ["imp", "omp", "random"]
    assert everything.baseline_rounds == everything.ticket_rounds
    assert everything.audit.square_queries == 5000 and everything.audit.eps is None


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.update({"bogus": 1}), r"config.bogus: unknown key"),
    (lambda c: c.transfer.standard.update({"epochs": -3}), r"transfer.standard.epochs=-3"),
    (lambda c: c.downstream.update({"data_rates": (1.5,)}), r"downstream.data_rates=1.5: must"),
    (lambda c: c.downstream.update({"datasets": ("mnist",)}),
     r"downstream.datasets=\('mnist',\): choose among"),
    (lambda c: c.pretrainings.adversarial.update({"imp_mode": "trades"}), r"pretrainings.adversarial.imp_mode='trades': choose"),
    (lambda c: c.pretrainings.adversarial.train.update({"lr": 0.0}), r"pretrainings.adversarial.train.lr=0.0"),
    (lambda c: c.transfer.adversarial.attack.update({"eps": 8}),
     r"transfer.adversarial.attack.eps=8.0: must be a number in \[0.0, 1.0\]"),
    (lambda c: c.update({"tickets": (1, 5)}), r"rounds \[5\] outside 1..imp.rounds=2"),
    # Settings the report cannot work with fail before any training, not after it.
    (lambda c: c.transfer.standard.update({"test": False}), r"transfer.standard.test=False"),
    (lambda c: setattr(c.transfer.adversarial, "eval_attack", {}),
     r"transfer.adversarial.eval_attack is empty: the study needs RA"),
    (lambda c: c.report.update({"tolerance": -1.0}), r"report.tolerance=-1.0: must be a number"),
    (lambda c: c.export.update({"version": 0}), r"export.version=0: must be a positive int"),
    (lambda c: c.transfer.update({"adversarial:svhn": c.transfer.adversarial.to_dict()}),
     r"transfer.adversarial:svhn: dataset 'svhn' is not among downstream.datasets"),
    (lambda c: c.update({"seeds": (1, 1)}), r"seeds=\(1, 1\): entries must be distinct"),
    (lambda c: c.report.update({"rule": "sigma"}), r"report.rule='sigma': choose one of"),
    (lambda c: c.report.update({"margin": -0.5}), r"report.margin=-0.5: must be a number"),
    (lambda c: c.report.update({"resamples": 5}), r"report.resamples=5: must be"),
    (lambda c: c.report.update({"bootstrap": 5}), r"report.bootstrap: unknown key"),
    (lambda c: c.pruning.update({"methods": ("omp",)}), r"pruning.methods=\('omp',\).*'imp' "
                                                         r"included"),
    (lambda c: c.pruning.update({"methods": ("imp", "snip")}), r"choose among"),
    (lambda c: c.pruning.update({"rounds": (5,)}), r"pruning.rounds=\(5,\): rounds \[5\] are "
                                                   r"not among the transferred tickets"),
    (lambda c: c.audit.update({"enabled": True, "eps": 1.5}), r"audit.eps=1.5: must be a number in"),
    (lambda c: c.audit.update({"enabled": True, "steps": 3}), r"audit.steps: unknown key"),
    (lambda c: c.update({"tickets": ("some",)}), r"tickets=\('some',\): give round numbers"),
])
def test_bad_configs_are_rejected_naming_key_and_value(edit, match):
    config = load_config("study", "tiny")
    with config.unlocked():
        edit(config)
    with pytest.raises(cfg.ConfigError, match=match):
        study.study_spec(config)


def test_missing_pretrained_weights_are_named(tmp_path):
    config = load_config("study", "tiny")
    config.pretrainings.adversarial.path = str(tmp_path / "nope")
    with pytest.raises(cfg.ConfigError, match="either `path`.*not both"):
        study.study_spec(config)
    config.pretrainings.adversarial.train = {}
    with pytest.raises(cfg.ConfigError, match=r"pretrainings.adversarial.path=.*no such file"):
        study.study_spec(config)
    # Converted weights of another architecture than the study's model.
    config.pretrainings.adversarial.path = str(_fake_converted(tmp_path / "r50"))
    with pytest.raises(cfg.ConfigError, match=r"holds a resnet50 \(imagenet stem, width 64\), "
                                              r"but model is resnet18 \(cifar stem, width 8\)"):
        study.study_spec(config)


def test_missing_downstream_data_fails_before_any_training(tmp_path):
    config = load_config("study", "tiny")
    config.downstream.dataset.path = str(tmp_path / "no_images")
    with mock.patch.object(train, "_train", side_effect=AssertionError("trained")):
        with pytest.raises(data.DatasetNotFoundError, match="no_images"):
            study.run(config, str(tmp_path / "study"), log=lambda *_: None)


def test_trainer_reports_bad_config_in_one_line():
    out = subprocess.run([sys.executable, os.path.join(REPO, "trainers", "study.py"),
                          "--config=configs/study.py:tiny", "--workdir=/tmp/never-written",
                          "--config.transfer.standard.epochs=0"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "study: error: transfer.standard.epochs=0: must be a positive int" in out.stderr
    assert "Traceback" not in out.stderr
    assert not os.path.exists("/tmp/never-written")


# --------------------------------------------------------------- double-win logic

def _row(ticket, regime, sa, ra, sparsity=0.0, pretraining="adversarial", seed=1,
         method=None, val_ra=None):
    return stages.TransferRow(
        pretraining=pretraining, dataset="cifar10", data_rate=1.0, regime=regime,
        method=method or ("dense" if ticket == "dense" else "imp"), ticket=ticket,
        sparsity=sparsity, seed=seed, sa=sa, ra=ra, sa_ckpt_test_ra=None,
        ra_ckpt_test_sa=None, val_sa=sa, val_ra=val_ra, ra_attack="PGD-20",
        cell=f"cells/{ticket}-{regime}")


def test_double_win_logic_on_constructed_results():
    rows = [_row("dense", "standard", 90.0, 10.0), _row("dense", "adversarial", 80.0, 50.0)]
    rows += [_row("round 6", "standard", 91.0, 10.0, 0.7379),   # matching
             _row("round 6", "adversarial", 80.0, 50.5, 0.7379),  # matching -> double-win
             _row("round 8", "standard", 90.5, 11.0, 0.8322),   # matching
             _row("round 8", "adversarial", 81.0, 49.0, 0.8322),  # RA worse -> not matching
             _row("round 10", "standard", 89.0, 12.0, 0.8926),  # SA worse
             _row("round 10", "adversarial", 82.0, 51.0, 0.8926)]
    summary = report.analyze(rows, TOLERANCE)
    (group,) = summary.values()
    by_ticket = {v["ticket"]: v for v in group["tickets"]}
    assert by_ticket["round 6"]["double_win"] == "yes"
    assert (by_ticket["round 8"]["standard"], by_ticket["round 8"]["adversarial"]) == (
        "yes", "no")
    assert (by_ticket["round 10"]["standard"], by_ticket["round 10"]["adversarial"]) == (
        "no", "yes")
    assert group["sparsest_double_win"]["ticket"] == "round 6"
    # With a 1-point tolerance round 8 and round 10 become double-win; round 10 is sparser.
    loose = list(report.analyze(rows, verdicts.Rule("tolerance", tolerance=1.0)).values())[0]
    assert loose["sparsest_double_win"]["ticket"] == "round 10"
    row, reason = report.choose_export(rows, summary)
    assert row.ticket == "round 6" and row.regime == "adversarial"
    assert "sparsest double-win" in reason
    # No double-win ticket: the best adversarial RA is exported, and the report says so.
    none = [r for r in rows if r.ticket != "round 6"]
    row, reason = report.choose_export(none, report.analyze(none, TOLERANCE))
    assert row.ticket == "round 10" and "no ticket is double-win" in reason
    text = report.markdown(rows, summary, TOLERANCE, reason)
    assert "| round 6 | imp | 73.79% |" in text and "Sparsest double-win ticket: **round 6**" in text


def _same_for_both_checkpoints(split, order, clean, robust):
    """Records of a run whose best-SA and best-RA checkpoints got the same examples right."""
    return records.ExampleRecords(split, order, len(clean), {
        "best_sa/clean": clean, "best_sa/robust": robust,
        "best_ra/clean": clean, "best_ra/robust": robust})


def _recorded_rows(workdir, ticket, regime, clean, robust, sparsity=0.0, seed=1,
                   order="5000:test-order"):
    """A row whose per-example records (`clean` for SA, `robust` for RA) are on disk."""
    cell = os.path.join(workdir, "cells", f"{ticket}-{regime}-s{seed}".replace(" ", "_"))
    kept = _same_for_both_checkpoints("test", order, clean, robust)
    records.write(cell, kept)
    return dataclasses.replace(
        _row(ticket, regime, kept.accuracy("best_sa/clean"), kept.accuracy("best_ra/robust"),
             sparsity, seed=seed),
        cell=os.path.relpath(cell, workdir),
        records=os.path.relpath(records.path_in(cell), workdir))


def _flipped(values, fraction, rng, to):
    """`values` with `fraction` of its examples set to `to` (where they were not)."""
    out = values.copy()
    candidates = np.flatnonzero(values != to)
    out[rng.choice(candidates, int(fraction * len(values)), replace=False)] = to
    return out


def test_paired_verdicts_on_recorded_examples(tmp_path):
    rng = np.random.default_rng(0)
    workdir = str(tmp_path)
    n = 5000
    dense = {regime: (rng.random(n) < 0.8, rng.random(n) < 0.4) for regime in report.REGIMES}
    rows = [_recorded_rows(workdir, "dense", regime, *dense[regime])
            for regime in report.REGIMES]
    # round 2: the dense model's own outcomes (identical: matches); round 4: 5 points
    # worse in adversarial RA (no); round 5: 1 point worse in standard SA (inconclusive).
    for regime in report.REGIMES:
        clean, robust = dense[regime]
        rows.append(_recorded_rows(workdir, "round 2", regime, clean, robust, 0.6))
        rows.append(_recorded_rows(workdir, "round 4", regime, clean, _flipped(
            robust, 0.05, rng, False) if regime == "adversarial" else robust, 0.84))
        rows.append(_recorded_rows(workdir, "round 5", regime, _flipped(
            clean, 0.01, rng, False) if regime == "standard" else clean, robust, 0.9))
    rule = verdicts.Rule(margin=1.0, resamples=1000)

    def load(relative):
        return records.read_file(os.path.join(workdir, relative))
    (group,) = report.analyze(rows, rule, load).values()
    by_ticket = {v["ticket"]: v for v in group["tickets"]}
    assert by_ticket["round 2"]["double_win"] == "yes"
    assert by_ticket["round 2"]["adversarial_ra_diff"].estimate == 0.0
    assert by_ticket["round 4"]["adversarial_ra_match"] == "no"
    assert by_ticket["round 4"]["adversarial_ra_diff"].estimate == pytest.approx(-5.0)
    assert by_ticket["round 4"]["double_win"] == "no"
    assert by_ticket["round 5"]["standard_sa_match"] == "inconclusive"
    assert by_ticket["round 5"]["double_win"] == "inconclusive"
    assert group["sparsest_double_win"]["ticket"] == "round 2"
    text = report.markdown(rows, {("adversarial", "cifar10", 1.0): group}, rule)
    assert "rule `paired`" in text and "same 5,000 test examples" in text
    assert "| round 4 | imp | 84.00% |" in text and "-5.00 [" in text
    assert "* Inconclusive: round 5 (imp, 90.00%): standard SA -1.00 [" in text
    assert "Double-win verdicts over 3 tickets: 1 yes, 1 no, 1 inconclusive." in text
    # A baseline at round 4's sparsity: compared with the IMP ticket example by example.
    omp = [dataclasses.replace(_recorded_rows(workdir, "round 4o", regime, *dense[regime], 0.84),
                               method="omp", ticket="round 4") for regime in report.REGIMES]
    (group,) = report.analyze(rows + omp, rule, load).values()
    (versus,) = group["versus"]
    assert (versus["method"], versus["ticket"]) == ("omp", "round 4")
    assert versus["adversarial_ra_diff"].estimate == pytest.approx(-5.0)  # IMP - OMP
    assert versus["adversarial_ra_diff"].high < 0 and versus["standard_sa_diff"].estimate == 0
    text = report.markdown(rows + omp, {("adversarial", "cifar10", 1.0): group}, rule)
    assert "IMP minus baseline at equal sparsity" in text
    assert "| omp (round 4) | 84.00% | +0.00 [" in text and "] baseline better |" in text
    assert report.analyze(rows, rule, load) == report.analyze(rows, rule, load)  # seeded
    # Without a double-win ticket the report says what rules each ticket out.
    failing = [r for r in rows if r.ticket in ("dense", "round 4")]
    text = report.markdown(failing, report.analyze(failing, rule, load), rule)
    assert ("No double-win ticket in this setting: round 4 (84.00%) is more than 1 point "
            "worse in adversarial RA, -5.00 [") in text
    # The records must be the examples of the dense model's, in the same order.
    other = _recorded_rows(workdir, "round 6", "standard", *dense["standard"], 0.95,
                           order="5000:another-order")
    with pytest.raises(records.RecordsError) as error:
        report.analyze(rows + [other], rule, load)
    assert "\n" not in str(error.value)
    assert "round_6-standard" in str(error.value) and "dense-standard" in str(error.value)
    # A record that does not reproduce its row's number is refused.
    wrong = dataclasses.replace(rows[-1], sa=rows[-1].sa + 1)
    with pytest.raises(records.RecordsError, match="does not reproduce the run's reported SA"):
        report.analyze(rows[:-1] + [wrong], rule, load)


# ------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("study"))
    previous = os.umask(0o022)  # what teammates on a shared workdir rely on
    try:
        rows, summary = study.run(load_config("study", "tiny"), workdir, log=lambda *_: None)
    finally:
        os.umask(previous)
    return workdir, rows, summary


def test_tiny_study_writes_every_artifact(tiny_study):
    workdir, rows, summary = tiny_study
    # Made under umask 022: every output readable by others, every folder traversable.
    for dirpath, dirnames, filenames in os.walk(workdir):
        # (the workdir itself is pytest's, made owner-only)
        assert dirpath == workdir or os.stat(dirpath).st_mode & 0o005 == 0o005, dirpath
        for name in filenames:
            assert os.stat(os.path.join(dirpath, name)).st_mode & 0o004, (dirpath, name)
    assert len(rows) == 6  # (dense + 2 tickets) x (standard, adversarial)
    assert {r.ticket for r in rows} == {"dense", "round 1", "round 2"}
    assert sorted(round(r.sparsity, 4) for r in rows if r.regime == "standard") == [
        0.0, 0.4, 0.64]
    with open(os.path.join(workdir, "results.csv")) as f:
        assert len(list(csv.DictReader(f))) == 6
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f) == [r.record() for r in rows]
    text = open(os.path.join(workdir, "report.md")).read()
    assert "cifar10_jpeg_small[5,6,7,8,9]" in text and "## Export" in text
    # Every transfer keeps which of the 500 test images each selected checkpoint got
    # right; the verdicts compare them with the dense model's (the `paired` rule).
    for row in rows:
        kept = records.read_file(os.path.join(workdir, row.records))
        assert kept.count == 500 and os.path.dirname(row.records) == row.cell
        assert (kept.accuracy("best_sa/clean"), kept.accuracy("best_ra/robust")) == (
            row.sa, row.ra)
    assert "Matching (rule `paired`)" in text and "same 500 test examples" in text
    assert "| ΔSA [95 % CI] |" in text
    for v in summary[("adversarial", "cifar10_jpeg_small[5,6,7,8,9]", 0.2)]["tickets"]:
        assert v["double_win"] in ("yes", "no", "inconclusive")
        difference = v["adversarial_ra_diff"]
        assert difference.low <= difference.estimate <= difference.high
    (png,) = glob.glob(os.path.join(workdir, "plots", "*.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    kinds = sorted(os.path.basename(p).split("_")[0]
                   for p in glob.glob(os.path.join(workdir, "cells", "*")))
    assert kinds == ["export", "imp", "pretrain"] + ["transfer"] * 6
    assert {r.ra_attack for r in rows} == {
        "PGD-2 linf eps 8/255 step 2/255, 1 restart, random start (cleverhans)"}
    assert "RA measured with: PGD-2 linf eps 8/255" in text


def _tiny_2by4_config():
    config = load_config("study", "tiny")
    config.pruning.methods = ("imp", "imp_2by4", "omp_2by4")
    config.export.update(dict(method="imp_2by4", onnx=True))
    return config


@pytest.fixture(scope="module")
def tiny_2by4_study(tiny_study, tmp_path_factory):
    """The tiny study with the 2:4 methods added, exporting the 2:4 ticket (with ONNX):
    on a copy of the tiny study, so only the 2:4 cells and the export are computed."""
    workdir = str(tmp_path_factory.mktemp("study_2by4") / "study")
    shutil.copytree(tiny_study[0], workdir)
    rows, summary = study.run(_tiny_2by4_config(), workdir, log=lambda *_: None)
    return workdir, rows, summary


def test_2by4_tickets_stay_2by4_through_transfer_and_export(tiny_2by4_study):
    workdir, rows, summary = tiny_2by4_study
    assert len(rows) == 10  # (dense + 2 IMP tickets + 2 2:4 tickets) x 2 regimes
    assert {(r.method, r.ticket) for r in rows} == {
        ("dense", "dense"), ("imp", "round 1"), ("imp", "round 2"), ("imp_2by4", "2:4"),
        ("omp_2by4", "2:4")}
    assert sorted(round(r.sparsity, 4) for r in rows if r.regime == "standard") == [
        0.0, 0.4, 0.4994, 0.4994, 0.64]  # 2:4: half of all but the 3-channel stem conv
    group = summary[("adversarial", "cifar10_jpeg_small[5,6,7,8,9]", 0.2)]
    (beside,) = group["structured"]  # the 2:4 IMP ticket next to the nearest unstructured
    assert (beside["ticket"], beside["unstructured"]) == ("2:4", "round 1")
    assert beside["standard_sa_diff"].low <= beside["standard_sa_diff"].high
    (versus,) = [e for e in group["versus"] if e["method"] == "omp_2by4"]
    assert versus["versus"] == "imp_2by4"
    assert {v["double_win"] for v in group["tickets"]} <= {"yes", "no", "inconclusive"}
    text = open(os.path.join(workdir, "report.md")).read()
    assert "| 2:4 | imp_2by4 | 49.94% |" in text and "| 2:4 (imp_2by4) | 49.94% |" in text
    assert "| omp_2by4 (2:4, vs imp_2by4) |" in text
    # Zeros stay zero in transfer: each 2:4 run's selected checkpoints are still 2:4.
    for row in [r for r in rows if r.method in ("imp_2by4", "omp_2by4")]:
        run = runs.open_run(os.path.join(workdir, row.cell))
        masks, meta = tickets.load(run.provenance["ticket"])
        assert meta["pattern"] == "2:4"
        model, _, _ = runs.load_best(run, "ra", data.load(run.dataset))
        kernels = pruning_wrapper.get_kernels(model)
        assert not pruning.nm_violations(kernels, 2, 4), row.cell
        assert all(not k[~masks[n]].any() for n, k in kernels.items()), row.cell
    # The study exported the adversarial 2:4 IMP transfer (export/1 holds the unstructured
    # one): ticket.json records the pattern, and every conv kernel with groups of 4 is
    # checked, in the SavedModel and in the ONNX file (whose logits onnxruntime matches).
    (row,) = [r for r in rows if r.method == "imp_2by4" and r.regime == "adversarial"]
    assert "the imp_2by4 ticket with the best adversarial RA" in text or \
        "sparsest double-win imp_2by4 ticket" in text
    info = json.load(open(os.path.join(workdir, "export", "2", "assets", "ticket.json")))
    assert info["source_run"]["path"] == os.path.join(workdir, row.cell)
    assert info["pattern"] == "2:4" and info["check_pattern"]["kernels_dense"] == [
        "conv1/kernel:0"]
    assert info["check_pattern"]["kernels_checked"] == 19  # ResNet-18: 20 convs
    assert info["check_onnx_pattern"]["kernels_checked"] == 19
    assert info["check_onnx_max_abs_logit_delta"] < 1e-4
    onnx_kernels = export.onnx_conv_kernels(os.path.join(workdir, "export", "2", "model.onnx"))
    assert not pruning.nm_violations(onnx_kernels, 2, 4)
    assert sum(pruning.nm_eligible(k.shape, 4) for k in onnx_kernels.values()) == 19


def test_exported_ticket_json_describes_the_exported_checkpoint(tiny_study):
    workdir, rows, _ = tiny_study
    export_dir = os.path.join(workdir, "export", "1")
    assert os.path.isfile(os.path.join(export_dir, "saved_model.pb"))
    info = json.load(open(os.path.join(export_dir, "assets", "ticket.json")))
    assert info["sparsity"] > 0 and info["check_sparsity"] == info["sparsity"]
    row = next(r for r in rows if os.path.join(workdir, r.cell) == info["source_run"]["path"])
    assert row.regime == "adversarial" and info["checkpoint"] == "best_ra"
    # The accuracies are the exported (best-RA) checkpoint's own; the best-SA one's are
    # kept only under a label.
    assert (info["test_sa"], info["test_ra"]) == (row.ra_ckpt_test_sa, row.ra)
    assert info["other_checkpoints"]["best_sa"]["test_sa"] == row.sa
    assert info["ra_attack"]["steps"] == 2 and info["ra_attack"]["library"] == "cleverhans"
    # Measured again, independently: the SavedModel alone on the test images.
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    served = tf.saved_model.load(export_dir).signatures["serving_default"]
    splits = data.load(runs.open_run(info["source_run"]["path"]).dataset)
    correct = total = 0
    for batch in pipeline.eval_batches(splits, "test", 250):
        predicted = served(images=batch["image"])["classes"].numpy()
        correct += int((predicted == batch["label"].numpy()).sum())
        total += len(predicted)
    assert 100.0 * correct / total == pytest.approx(info["test_sa"], abs=1e-9)
    report_text = open(os.path.join(workdir, "report.md")).read()
    assert f"test SA {info['test_sa']:.2f}%, RA {info['test_ra']:.2f}%) to `export/1`" \
        in report_text


def _neutral_changes(config, data_root):
    """Every setting that must not change a result: logging, cadence, batch, location."""
    for section in [config.transfer.standard, config.transfer.adversarial, config.imp.train] + [
            p.train for p in config.pretrainings.values() if p.train]:
        section.update(dict(verbose=1, eval_batch_size=7, log_every_steps=1,
                            checkpoint_every_steps=3))
    for section in (config.source, config.downstream.dataset):
        section.update(dict(path=data_root))
    config.runtime.update(dict(intra_op_threads=2, inter_op_threads=2))
    return config


def test_second_run_recomputes_nothing(tiny_study, tmp_path):
    workdir, rows, _ = tiny_study
    cells = sorted(glob.glob(os.path.join(workdir, "cells", "*")))
    stamps = {p: os.path.getmtime(p) for p in glob.glob(
        os.path.join(workdir, "cells", "*", "**", "*"), recursive=True)}
    # The same images in another place (the study keys data by content, not location).
    moved = shutil.copytree(BUNDLED_CIFAR, tmp_path / "elsewhere" / "cifar10_jpeg_small")
    config = _neutral_changes(load_config("study", "tiny"), str(moved))
    outputs = [os.path.join(workdir, name) for name in ("report.md", "summary.json")]
    before = [(open(p).read(), os.stat(p).st_mtime_ns) for p in outputs]
    with mock.patch.object(train, "_train", side_effect=AssertionError("retrained")):
        again, _ = study.run(config, workdir, log=lambda *_: None)
    assert again == rows
    # The same report, intervals included (a seeded bootstrap), not even rewritten.
    assert [(open(p).read(), os.stat(p).st_mtime_ns) for p in outputs] == before
    assert sorted(glob.glob(os.path.join(workdir, "cells", "*"))) == cells
    assert stamps == {p: os.path.getmtime(p) for p in stamps}
    # The export of an earlier run of the same selection is kept; the report is unchanged.
    assert sorted(os.listdir(os.path.join(workdir, "export"))) == ["1"]
    assert "to `export/1`." in open(os.path.join(workdir, "report.md")).read()


def _fake_result(cell, best):
    """A transfer's result without training (what a finished run leaves behind): its
    per-example records reproduce `best`'s test SA and RA on the examples (split, order,
    count) of the study's real cells."""
    result = train.TrainResult(cell, 1, best, dataclasses.replace(best, checkpoint="best_ra"),
                               None, {}, 0.0, 0.0)
    os.makedirs(cell, exist_ok=True)
    real = records.read_file(sorted(glob.glob(os.path.join(os.path.dirname(cell), "*",
                                                          records.FILE)))[0])

    def first(percent):
        hits = round(percent * real.count / 100)
        assert 100.0 * hits / real.count == percent, (percent, real.count)
        return np.arange(real.count) < hits
    records.write(cell, _same_for_both_checkpoints(real.split, real.order,
                                                   first(best.test_sa), first(best.test_ra)))
    with open(os.path.join(cell, train.RESULT_FILE), "w") as f:
        json.dump(result.to_json(), f)
    return result


def test_changing_one_setting_recomputes_exactly_the_dependent_cells(tiny_study, tmp_path):
    workdir, rows, _ = tiny_study
    copy = str(shutil.copytree(workdir, tmp_path / "study"))
    config = load_config("study", "tiny")
    config.transfer.adversarial.lr = 0.02
    config.export.enabled = False
    computed = []

    def fake_transfer(pretrained, ticket, dataset, spec, cell, *args, **kwargs):
        computed.append((os.path.basename(ticket) if ticket else "dense", spec.mode, spec.lr))
        best = train.CheckpointResult("best_sa", 0, 50.0, 20.0, 50.0, 20.0)
        return _fake_result(cell, best)
    with mock.patch.object(train, "_train", side_effect=AssertionError("retrained")), \
            mock.patch.object(transfer, "run", side_effect=fake_transfer):
        again, _ = study.run(config, copy, log=lambda *_: None)
    assert sorted(computed) == [("dense", "pgd", 0.02), ("round_01", "pgd", 0.02),
                                ("round_02", "pgd", 0.02)]
    unchanged = [r for r in again if r.regime == "standard"]
    assert unchanged == [r for r in rows if r.regime == "standard"]


def test_export_version_holding_another_selection_is_kept(tiny_study, tmp_path):
    workdir, _, _ = tiny_study
    copy = str(shutil.copytree(workdir, tmp_path / "study"))
    asset = os.path.join(copy, "export", "1", "assets", "ticket.json")
    info = json.load(open(asset))
    info["source_run"]["key"] = "0" * 12
    info["selection"] = "an older choice"
    json.dump(info, open(asset, "w"))
    with mock.patch.object(train, "_train", side_effect=AssertionError("retrained")):
        study.run(load_config("study", "tiny"), copy, log=lambda *_: None)
    assert json.load(open(asset))["selection"] == "an older choice"  # left as it was
    new = json.load(open(os.path.join(copy, "export", "2", "assets", "ticket.json")))
    assert new["source_run"]["key"] != "0" * 12
    text = open(os.path.join(copy, "report.md")).read()
    assert "`export/1` already holds an earlier selection (an older choice)" in text
    assert "to `export/2`." in text
    # Run again: export/2 is this selection's; nothing new is exported, nothing rewritten.
    before = snapshot(copy)
    with mock.patch.object(train, "_train", side_effect=AssertionError("retrained")):
        study.run(load_config("study", "tiny"), copy, log=lambda *_: None)
    assert sorted(os.listdir(os.path.join(copy, "export"))) == ["1", "2"]
    assert snapshot(copy) == before


def _cell(workdir, regime, ticket):
    for path in glob.glob(os.path.join(workdir, "cells", "transfer_*")):
        prov = json.load(open(os.path.join(path, "transfer.json")))
        if prov["mode"] == regime and prov["ticket_round"] == ticket:
            return path
    raise KeyError((regime, ticket))


def test_finished_study_is_reported_from_a_read_only_copy(tiny_study, tmp_path,
                                                          read_only_copy):
    reference, _, _ = tiny_study
    archive = read_only_copy(reference, tmp_path / "archive")
    before = snapshot(archive)
    out = subprocess.run([sys.executable, "trainers/study.py", "--config=configs/study.py:tiny",
                          f"--workdir={archive}"], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"study finished: {archive}/report.md" in out.stdout
    assert snapshot(archive) == before


def test_evaluate_export_and_imp_binaries_on_study_outputs(tiny_study, tmp_path,
                                                          read_only_copy):
    workdir, rows, _ = tiny_study
    cell = _cell(workdir, "pgd", 2)
    row = next(r for r in rows if r.cell == os.path.relpath(cell, workdir))
    out = subprocess.run([sys.executable, os.path.join(REPO, "trainers", "evaluate.py"),
                          f"--run={cell}", "--split=test", "--steps=2", "--checkpoint=ra"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"best-RA checkpoint on test: SA {row.ra_ckpt_test_sa:.2f}%" in out.stdout
    out = subprocess.run([sys.executable, os.path.join(REPO, "trainers", "export.py"),
                          f"--checkpoint={cell}", f"--export_dir={tmp_path / 'serving'}",
                          "--version=4"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert os.path.isfile(tmp_path / "serving" / "4" / "saved_model.pb")
    assert "sparsity 64.00%" in out.stdout
    pretrained = glob.glob(os.path.join(workdir, "cells", "pretrain_*", "weights"))[0]
    imp_command = ["trainers/imp.py", "--config=configs/imp.py:local",
                   f"--pretrained={pretrained}", "--config.imp.rounds=2",
                   "--config.train.epochs=1", "--config.train.verbose=0",
                   "--config.train.attack.steps=1"]
    out = subprocess.run([sys.executable, *imp_command, f"--workdir={tmp_path / 'imp'}"],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "round_02: sparsity 36.00%" in out.stdout
    # SIGTERM in the middle of round 1's training: a checkpoint and one line; the same
    # command then finds exactly the uninterrupted run's tickets.
    stopped = [sys.executable, SIGNALLER, "--at=round_01:2"] + imp_command + [
        f"--workdir={tmp_path / 'stopped'}"]
    out = subprocess.run(stopped, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == preemption.EXIT_STATUS, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith("imp: stopped by SIGTERM at epoch 1 "
                                                          "step 2 of ")
    assert not os.path.exists(tmp_path / "stopped" / "tickets" / "round_02")
    out = subprocess.run([sys.executable, *imp_command, f"--workdir={tmp_path / 'stopped'}"],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    for k in (1, 2):
        ours, theirs = (tickets.load(str(d / "tickets" / f"round_{k:02d}"))[0]
                        for d in (tmp_path / "stopped", tmp_path / "imp"))
        assert all((ours[n] == theirs[n]).all() for n in theirs)
    # The finished IMP run from a read-only copy: its tickets reported, nothing written.
    archive = read_only_copy(tmp_path / "imp", tmp_path / "imp_archive")
    before = snapshot(archive)
    out = subprocess.run([sys.executable, *imp_command, f"--workdir={archive}"],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "round_02: sparsity 36.00%" in out.stdout and snapshot(archive) == before


def test_transfer_records_and_warns_when_ticket_and_weights_differ(tiny_study, tmp_path):
    workdir, _, _ = tiny_study
    # The study's own transfers pair each ticket with the weights IMP ran on.
    provenance = json.load(open(os.path.join(_cell(workdir, "pgd", 2), "transfer.json")))
    assert provenance["ticket_matches_pretrained"] is True
    assert provenance["ticket_source_sha256"] == provenance["pretrained_sha256"]
    # The same masks onto weights converted from another file: a warning naming both, and
    # the record says so (checked before any data is read: this dataset does not exist).
    pretrained = glob.glob(os.path.join(workdir, "cells", "pretrain_*", "weights"))[0]
    other = shutil.copytree(pretrained, tmp_path / "other_weights")
    meta = json.load(open(other / "converted.json"))
    meta["source_sha256"] = "f" * 64
    json.dump(meta, open(other / "converted.json", "w"))
    ticket = glob.glob(os.path.join(workdir, "cells", "imp_*", "tickets", "round_02"))[0]
    missing = data.DataSpec("imagefolder", path=str(tmp_path / "no_images"), image_size=32)
    with pytest.warns(transfer.TicketMismatchWarning, match=r"sha256 ffffffffffff\.\.\."):
        with pytest.raises(data.DatasetNotFoundError):
            transfer.run(str(other), ticket, missing, train.TrainSpec(), str(tmp_path / "t"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the matching pair is silent
        with pytest.raises(data.DatasetNotFoundError):
            transfer.run(pretrained, ticket, missing, train.TrainSpec(), str(tmp_path / "t"))


def _assert_same_results(workdir, reference):
    """The study in `workdir` ended with the reference run's results.csv and per-example
    records, byte for byte."""
    with open(os.path.join(reference, "results.csv")) as f:
        assert (workdir / "results.csv").read_text() == f.read()
    theirs = sorted(glob.glob(os.path.join(reference, "cells", "*", records.FILE)))
    assert len(theirs) == len(glob.glob(os.path.join(reference, "cells", "transfer_*")))
    for path in theirs:
        ours = workdir / os.path.relpath(path, reference)
        assert ours.read_bytes() == open(path, "rb").read(), ours


def _nothing_half_written(workdir):
    """Every file and directory under its real name is complete (scratch is hidden)."""
    for dirpath, dirnames, filenames in os.walk(workdir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.endswith(".json") and not name.startswith("."):
                with open(os.path.join(dirpath, name)) as f:
                    json.load(f)
        parent, name = os.path.split(dirpath)
        if os.path.basename(parent) == "tickets":
            tickets.load(dirpath)
        elif name == "weights":
            convert.load_converted(dirpath)
        elif os.path.basename(parent) == "export" and name.isdigit():
            for part in ("saved_model.pb", "variables/variables.index", "assets/ticket.json"):
                assert os.path.isfile(os.path.join(dirpath, part)), (dirpath, part)


def test_sigterm_in_a_study_cell_then_the_same_command_resumes(tiny_study, tmp_path):
    reference, _, _ = tiny_study
    workdir = tmp_path / "study"
    command = ["trainers/study.py", "--config=configs/study.py:tiny", f"--workdir={workdir}"]
    out = subprocess.run([sys.executable, SIGNALLER, "--at=transfer_:2"] + command, cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == preemption.EXIT_STATUS, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith(
        "study: stopped by SIGTERM at epoch 1 step 2 of ")
    assert "checkpoint written, re-running the same command resumes" in out.stderr
    assert "Traceback" not in out.stderr and not (workdir / "results.csv").exists()
    _nothing_half_written(workdir)
    out = subprocess.run([sys.executable] + command, cwd=REPO, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    _assert_same_results(workdir, reference)


def test_2by4_cells_do_not_depend_on_the_unstructured_pruning_rate(tiny_2by4_study):
    workdir, _, _ = tiny_2by4_study
    paths = {}
    for fraction in (0.4, 0.3):
        config = _tiny_2by4_config()
        config.imp.fraction = fraction
        ctx = study.Study(config, workdir, log=lambda *_: None).ctx
        paths[fraction] = [stages.resolve(ctx, a).path for a in (
            cells.imp_address("adversarial"), cells.imp_address("adversarial", "imp_2by4"),
            cells.baseline_address("adversarial", "omp_2by4", None))]
    assert paths[0.4][0] != paths[0.3][0]    # unstructured IMP: another run
    assert paths[0.4][1:] == paths[0.3][1:]  # 2:4 tickets: the same cells, reused


def test_study_killed_in_its_2by4_imp_round_resumes_to_the_same_results(tiny_2by4_study,
                                                                        tmp_path):
    """kill -9 inside the 2:4 IMP round's training, then the same command: the same 2:4
    tickets (so their finished transfers are reused, not recomputed) and the same report."""
    reference, _, _ = tiny_2by4_study
    workdir = tmp_path / "study"
    shutil.copytree(reference, workdir)
    runner = study.Study(_tiny_2by4_config(), str(workdir), log=lambda *_: None)
    imp_2by4 = cells.imp_address("adversarial", "imp_2by4")
    redo = [imp_2by4]
    shutil.rmtree(stages.resolve(runner.ctx, imp_2by4).path)
    os.remove(workdir / "results.csv")
    worker = [sys.executable, os.path.join(REPO, "tests", "study_worker.py"),
              f"--workdir={workdir}", "--methods=imp,imp_2by4,omp_2by4",
              "--export_method=imp_2by4", "--onnx"]
    # The only training left is the 2:4 IMP round: its first step is the kill point.
    out = subprocess.run(worker + ["--kill_at=imp", "--kill_after=1"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    _nothing_half_written(workdir)
    imp_dir = stages.resolve(runner.ctx, imp_2by4).path
    assert tickets.is_ticket(os.path.join(imp_dir, "tickets", "round_01"))  # 3:4, untrained
    assert not os.path.exists(os.path.join(imp_dir, "tickets", "round_02"))
    out = subprocess.run(worker, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ran = next(line for line in out.stdout.splitlines() if line.startswith("ran ["))
    assert sorted(json.loads(ran[len("ran "):])) == sorted(redo)
    _assert_same_results(workdir, reference)
    ours, _ = tickets.load(os.path.join(imp_dir, "tickets", "round_02"))
    theirs, _ = tickets.load(os.path.join(reference, os.path.relpath(imp_dir, workdir),
                                          "tickets", "round_02"))
    assert tickets.fingerprint(ours) == tickets.fingerprint(theirs)
    assert not pruning.nm_violations(ours, 2, 4)
    assert (workdir / "report.md").read_text() == open(os.path.join(reference,
                                                                    "report.md")).read()


@pytest.mark.slow  # suite time; also covered by the SIGTERM and lease-takeover tests
def test_study_killed_anywhere_resumes_to_an_uninterrupted_runs_results(tiny_study, tmp_path):
    reference, _, _ = tiny_study
    workdir = tmp_path / "study"
    worker = [sys.executable, os.path.join(REPO, "tests", "study_worker.py"),
              f"--workdir={workdir}"]
    for kill_at, after in (("pretrain", 3), ("imp", 3), ("after_cell", 2), ("export", 1)):
        out = subprocess.run(worker + [f"--kill_at={kill_at}", f"--kill_after={after}"],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
        assert out.returncode == -signal.SIGKILL, (kill_at, out.stderr[-3000:])
        _nothing_half_written(workdir)
    assert not os.path.exists(workdir / "export" / "1")  # killed before the rename
    out = subprocess.run(worker, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    _nothing_half_written(workdir)
    _assert_same_results(workdir, reference)
    # The report's tables too (its export sentence depends on the workdir's history).
    ours, theirs = ((workdir / "report.md").read_text(),
                    open(os.path.join(reference, "report.md")).read())
    assert ours.split("## Export")[0] == theirs.split("## Export")[0]
    assert "to `export/1`." in ours
    ours, theirs = (json.load(open(os.path.join(d, "export", "1", "assets", "ticket.json")))
                    for d in (workdir, reference))
    for key in ("test_sa", "test_ra", "sparsity", "layer_sparsity", "checkpoint"):
        assert ours[key] == theirs[key], key
    assert ours["source_run"]["key"] == theirs["source_run"]["key"]
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    kernels = [tf.saved_model.load(os.path.join(d, "export", "1")).conv_kernels
               for d in (workdir, reference)]
    for a, b in zip(*kernels):
        assert (a.numpy() == b.numpy()).all(), a.name


# ------------------------------------------------------ seeds, baselines, audit

def _rows_over_seeds(ticket, values, sparsity=0.0):
    return [_row(ticket, regime, sa, ra, sparsity, seed=seed)
            for seed, (sa, ra) in enumerate(values, start=1) for regime in report.REGIMES]


def test_seeds_are_averaged_and_the_std_rule_uses_the_dense_spread():
    rows = _rows_over_seeds("dense", [(80, 40), (82, 41), (84, 42)])     # 82 +- 2, 41 +- 1
    rows += _rows_over_seeds("round 6", [(80, 40), (81, 41), (80.5, 40.5)], 0.7379)  # 80.5, 40.5
    std = verdicts.Rule("std")
    (strict,) = report.analyze(rows, TOLERANCE).values()
    (spread,) = report.analyze(rows, std).values()
    assert spread["dense"]["standard"] == {"sa": 82.0, "sa_std": 2.0, "ra": 41.0,
                                           "ra_std": 1.0, "n": 3}
    assert strict["tickets"][0]["double_win"] == "no"    # 80.5 < 82
    assert spread["tickets"][0]["double_win"] == "yes"   # 80.5 >= 82 - 2, 40.5 >= 41 - 1
    text = report.markdown(rows, report.analyze(rows, std), std)
    assert "rule `std`" in text and "Seeds: 1, 2, 3 (values: mean ± sample standard" in text
    assert "| dense | | 0.00% | 82.00 ± 2.00 | 41.00 ± 1.00 |" in text
    # The export takes, among the seeds, the run with the best validation RA.
    rows = [dataclasses.replace(r, val_ra={1: 30.0, 2: 35.0, 3: 31.0}[r.seed]) for r in rows]
    row, _ = report.choose_export(rows, report.analyze(rows, std))
    assert (row.ticket, row.regime, row.seed) == ("round 6", "adversarial", 2)


def test_seeds_give_per_seed_cells(tiny_study, tmp_path):
    workdir, rows, _ = tiny_study
    copy = str(shutil.copytree(workdir, tmp_path / "study"))
    config = load_config("study", "tiny")
    config.seeds = (1, 7)
    config.export.enabled = False
    calls = []

    def fake_transfer(pretrained, ticket, dataset, spec, cell, *args, **kwargs):
        calls.append((os.path.basename(ticket) if ticket else "dense", spec.mode, spec.seed,
                      cell))
        best = train.CheckpointResult("best_sa", 0, 50.0, 20.0, 40.0 + spec.seed, 20.0)
        return _fake_result(cell, best)
    with mock.patch.object(train, "_train", side_effect=AssertionError("retrained")), \
            mock.patch.object(transfer, "run", side_effect=fake_transfer):
        again, _ = study.run(config, copy, log=lambda *_: None)
    # Seed 1's cells are the finished ones; seed 7 gets a cell of its own per transfer.
    assert sorted(c[:3] for c in calls) == sorted(
        (t, m, 7) for t in ("dense", "round_01", "round_02") for m in ("standard", "pgd"))
    old_cells = {os.path.join(copy, r.cell) for r in rows}
    assert not {c[3] for c in calls} & old_cells and len({c[3] for c in calls}) == 6
    assert sorted({r.seed for r in again}) == [1, 7] and len(again) == 12
    assert "Seeds: 1, 7 (values: mean ± sample standard deviation" in open(
        os.path.join(copy, "report.md")).read()


def test_baselines_reach_the_exact_sparsity_and_flow_through_transfer(tiny_study, tmp_path):
    workdir, _, _ = tiny_study
    copy = str(shutil.copytree(workdir, tmp_path / "study"))
    config = load_config("study", "tiny")
    config.tickets = (2,)
    config.pruning.methods = ("imp", "omp", "random")
    config.export.enabled = False
    with mock.patch.object(train, "_train", wraps=train._train) as trained:
        rows, summary = study.run(config, copy, log=lambda *_: None)
    assert trained.call_count == 4  # omp and random x standard and adversarial
    (imp_ticket,) = glob.glob(os.path.join(copy, "cells", "imp_*", "tickets", "round_02"))
    imp_masks, _ = tickets.load(imp_ticket)
    for method in ("omp", "random"):
        (path,) = [os.path.join(p, "ticket") for p in glob.glob(os.path.join(copy, "cells",
                                                                              "baseline_*"))
                   if tickets.load(os.path.join(p, "ticket"))[1]["method"] == method]
        masks, meta = tickets.load(path)
        assert set(masks) == set(imp_masks)  # the same layers (every conv)
        assert sum(int((~m).sum()) for m in masks.values()) == sum(
            int((~m).sum()) for m in imp_masks.values())
        assert any((masks[n] != imp_masks[n]).any() for n in masks)
        assert {(r.regime, r.sparsity) for r in rows if r.method == method} == {
            ("standard", meta["sparsity"]), ("adversarial", meta["sparsity"])}
    (group,) = summary.values()
    assert [v["method"] for v in group["tickets"]] == ["imp", "omp", "random"]
    text = open(os.path.join(copy, "report.md")).read()
    assert "| round 2 | omp | 64.00% |" in text and "Sparsest double-win baseline:" in text
    with open(os.path.join(copy, "results.csv")) as f:
        assert {r["method"] for r in csv.DictReader(f)} == {"dense", "imp", "omp", "random"}


def test_audit_stage_and_binary(tiny_study, tmp_path):
    workdir, rows, _ = tiny_study
    copy = str(shutil.copytree(workdir, tmp_path / "study"))
    config = load_config("study", "tiny")
    config.audit.enabled = True
    with mock.patch.object(train, "_train", side_effect=AssertionError("retrained")):
        audited, _ = study.run(config, copy, log=lambda *_: None)
    with_audit = [r for r in audited if r.audit]
    assert {(r.method, r.regime) for r in with_audit} == {
        ("dense", "standard"), ("dense", "adversarial"), ("imp", "adversarial")}
    info = json.load(open(os.path.join(copy, "export", "1", "assets", "ticket.json")))
    assert info["audit"]["examples"] == 50 and info["audit"]["version"] == "standard"
    assert set(info["audit"]["attacks"]) == {"pgd", "apgd_ce", "apgd_t", "fab_t", "square"}
    assert info["audit"]["attacks"]["apgd_ce"]["steps"] == 5
    assert info["audit"]["attacks"]["square"]["queries"] == 20
    text = open(os.path.join(copy, "report.md")).read()
    assert "## Robustness audit" in text and "(standard version: " in text
    assert "| PGD RA | APGD-CE | APGD-T | FAB-T | Square | AutoAttack | worst case |" in text
    # Audits of one model at several data rates stay apart: each row names its rate.
    assert "| pre-training | dataset | data rate | ticket | regime |" in text
    assert " | 0.2 | dense | standard | 1 | 50 | " in text
    # Which examples each attack broke, next to each audit: they reproduce its numbers,
    # and the exported ticket is compared with the audited dense model example by example.
    for row in with_audit:
        kept = records.read_file(os.path.join(copy, row.audit["records"]))
        assert kept.count == 50
        assert kept.accuracy("autoattack") == row.audit["autoattack_ra"]
        assert kept.accuracy("worst_case") == row.audit["worst_case_ra"]
        assert kept.accuracy("pgd") == row.audit["ra"]["pgd"]
        assert not (kept.correct["autoattack"] & ~kept.correct["clean"]).any()
    assert "What the audit changes for round " in text and "under AutoAttack (" in text
    assert "at data rate 0.2, adversarial transfer, seed 1) against" in text
    # The binary, on a study cell; bad input is one line.
    cell = os.path.join(copy, with_audit[0].cell)
    out = subprocess.run([sys.executable, os.path.join(REPO, "trainers", "audit.py"),
                          f"--run={cell}", "--examples=20", "--apgd_steps=2",
                          "--square_queries=5"], capture_output=True, text=True, timeout=600,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "20 test examples" in out.stdout and "worst case with PGD" in out.stdout
    assert json.load(open(os.path.join(cell, "audit.json")))["examples"] == 20
    assert records.read(cell, records.AUDIT_FILE).count == 20
    for flags_, message in ((["--run=/nonexistent", "--eps=0.1"], "is not a transfer run"),
                            ([f"--run={cell}", "--eps=2"], "audit.eps=2.0: must be a number in [0.0, 1.0]")):
        out = subprocess.run([sys.executable, os.path.join(REPO, "trainers", "audit.py"),
                              *flags_], capture_output=True, text=True, timeout=600, cwd=REPO)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


# ------------------------------------------------------------------------ scale-out

def _ran(output):
    """The cell addresses a study_worker run computed (its `ran [...]` line)."""
    line = next(l for l in output.splitlines() if l.startswith("ran "))
    return json.loads(line[4:])


@pytest.mark.slow  # suite time; also covered by the lease tests
def test_two_shards_give_one_process_results_even_after_a_kill(tiny_study, tmp_path):
    reference, _, _ = tiny_study
    workdir = tmp_path / "study"
    worker = [sys.executable, os.path.join(REPO, "tests", "study_worker.py"),
              f"--workdir={workdir}"]
    owner = next(i for i in range(2) if study.shard(i, 2)("pretrain:adversarial"))

    def together(extra=None):
        procs = [subprocess.Popen(worker + [f"--shard={i}/2"] + (extra or {}).get(i, []),
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for i in range(2)]
        return [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]

    # The pre-training's shard is SIGKILLed in the middle of that cell.
    first = together({owner: ["--kill_at=pretrain", "--kill_after=3"]})
    assert first[owner][0] == -signal.SIGKILL, first[owner][2][-3000:]
    assert first[1 - owner][0] == 0 and _ran(first[1 - owner][1]) == []  # nothing ready
    ran = {0: [], 1: []}
    for _ in range(6):  # re-run both shards as their inputs appear
        outputs = together()
        for i, (code, out, err) in enumerate(outputs):
            assert code == 0, err[-3000:]
            ran[i] += _ran(out)
        if not any(_ran(out) for _, out, _ in outputs):
            break
    cells = [c["cell"] for c in study.Study(load_config("study", "tiny"), str(workdir)).cells()]
    assert sorted(ran[0] + ran[1]) == sorted(cells)  # every cell once, no cell twice
    assert ran[0] and ran[1]
    out = subprocess.run(worker, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _ran(out.stdout) == []  # assembling computes nothing
    _assert_same_results(workdir, reference)


@pytest.mark.slow  # suite time; also covered by the --cell and launcher tests
def test_plan_commands_run_one_by_one_then_assemble(tiny_study, tmp_path):
    reference, _, _ = tiny_study
    workdir, plan_file = tmp_path / "study", tmp_path / "plan.json"
    base = [sys.executable, "trainers/study.py", "--config=configs/study.py:tiny",
            f"--workdir={workdir}"]
    out = subprocess.run(base + [f"--plan={plan_file}"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    plan = json.loads(plan_file.read_text())
    cells = [c["cell"] for c in plan["cells"]]
    assert cells[0] == "pretrain:adversarial" and cells[3] == "imp:adversarial"
    assert cells[-1] == "export" and len(cells) == 9
    assert all(c["resources"]["gpus"] == 0 for c in plan["cells"])  # tiny: CPU jobs
    assert all(plan_file.with_suffix(".json.sh").read_text().count(c["command"]) == 1
               for c in plan["cells"])
    assert not workdir.exists()  # planning runs nothing
    # A cell before its inputs: a clear error, nothing computed.
    with pytest.raises(study.CellSelectionError, match=r"cell imp:adversarial cannot run yet: "
                       r"it needs pretrain:adversarial first"):
        study.Study(load_config("study", "tiny"), str(workdir), log=lambda *_: None,
                    select=study.only("imp:adversarial")).run()
    # The pre-training and IMP cells as a finished earlier run left them (saves their
    # training time); their commands must find them, the transfer commands compute.
    for path in glob.glob(os.path.join(reference, "cells", "*")):
        if os.path.basename(path).startswith(("pretrain_", "imp_")):
            shutil.copytree(path, workdir / "cells" / os.path.basename(path))
    for cell in plan["cells"]:  # each command's cell, in order (in-process: faster)
        address = cell["command"].rsplit("--cell=", 1)[1].strip("'")
        assert address == cell["cell"]
        runner = study.Study(load_config("study", "tiny"), str(workdir), log=lambda *_: None,
                             select=study.only(address))
        rows, summary = runner.run()
        assert summary is None
        if address.startswith(("transfer:", "export")):
            assert runner.ran == [address]
        else:
            assert runner.ran == [] and address in runner.finished
        assert not (workdir / "results.csv").exists()
    out = subprocess.run(plan["assemble"]["command"], shell=True, cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    _assert_same_results(workdir, reference)
    assert "[transfer]" not in out.stdout and "[imp]" not in out.stdout


@pytest.mark.parametrize("args,match", [
    (["--shard=3/2"], r"--shard='3/2': shard 3/2: need 0 <= index < count"),
    (["--shard=half"], r"--shard='half': write I/N"),
    (["--shard=0/2", "--cell=imp:adversarial"], "--shard and --cell: give at most one"),
    (["--cell=nope"], r"--cell='nope' is not a cell of this study; its cells are: "
                      r"pretrain:adversarial, transfer:adversarial:dense"),
])
def test_bad_selections_are_one_line_errors(args, match, tmp_path):
    out = subprocess.run([sys.executable, "trainers/study.py", "--config=configs/study.py:tiny",
                          f"--workdir={tmp_path / 'w'}"] + args, cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2
    import re  # pylint: disable=import-outside-toplevel
    assert re.search(match, out.stderr.strip().splitlines()[-1]), out.stderr[-2000:]


# --------------------------------------------------------- leases, launcher, status

_CELL_LINE = ("[pretrain]", "[convert]", "[imp]", "[baseline]", "[transfer]")


def _computed_cells(text):
    """The cell directories named by the lines a process prints for cells it computes."""
    return [line.rsplit("-> ", 1)[-1].strip() for line in text.splitlines()
            if line.startswith(_CELL_LINE)]


@pytest.mark.slow  # suite time; also covered by the held-cell and takeover lease tests
def test_two_processes_started_at_once_compute_every_cell_once(tiny_study, tmp_path):
    reference, _, _ = tiny_study
    workdir = tmp_path / "study"
    command = [sys.executable, "trainers/study.py", "--config=configs/study.py:tiny",
               f"--workdir={workdir}"]
    procs = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    computed = _computed_cells(outputs[0][0]) + _computed_cells(outputs[1][0])
    # pretrain + imp + 6 transfers, each by exactly one process; both shared the work.
    assert len(computed) == 8 and len(set(computed)) == 8, computed
    assert all(_computed_cells(out) for out, _ in outputs)
    assert "study: " in outputs[0][0] and " cells done" in outputs[0][0]
    _nothing_half_written(workdir)
    final = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0 and not _computed_cells(final.stdout)
    _assert_same_results(workdir, reference)


def test_a_killed_lease_holder_is_taken_over_and_the_cell_resumes(tiny_study, tmp_path):
    reference, _, _ = tiny_study
    workdir = tmp_path / "study"
    worker = [sys.executable, os.path.join(REPO, "tests", "study_worker.py"),
              f"--workdir={workdir}", "--stale_seconds=4"]
    holder = subprocess.Popen(worker + ["--kill_at=pretrain", "--kill_after=3"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not glob.glob(str(workdir / "cells" / "pretrain_*" / "lease.json")):
        assert time.time() < deadline and holder.poll() is None, holder.stderr.read()[-3000:]
        time.sleep(0.1)
    other = subprocess.Popen(worker, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    holder.wait(timeout=600)
    assert holder.returncode == -signal.SIGKILL
    out, err = other.communicate(timeout=900)
    assert other.returncode == 0, err[-3000:]
    assert "pretrain:adversarial" in _ran(out)  # taken over from the dead holder
    _assert_same_results(workdir, reference)


def _cell_dir(workdir, address):
    runner = study.Study(load_config("study", "tiny"), str(workdir), log=lambda *_: None)
    return stages.resolve(runner.ctx, address).path


def test_a_cell_held_by_another_process_is_refused_or_waited_for(tmp_path):
    workdir = tmp_path / "study"
    cell = _cell_dir(workdir, "pretrain:adversarial")
    os.makedirs(cell)
    owner = dict(leases.owner_record(), host="gpu-node-7", pid=4242, job="31337")
    (pathlib.Path(cell) / leases.LEASE_FILE).write_text(json.dumps(owner))
    base = [sys.executable, "trainers/study.py", "--config=configs/study.py:tiny",
            f"--workdir={workdir}", "--cell=pretrain:adversarial"]
    out = subprocess.run(base, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith(
        "study: error: cell pretrain:adversarial is being computed by gpu-node-7:4242 (job "
        "31337)")
    out = subprocess.run(base + ["--wait", "--wait_timeout=3"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and "study: error: waited 3 s; still" in out.stderr
    assert "held by gpu-node-7:4242" in out.stderr and "Traceback" not in out.stderr
    status = subprocess.run([sys.executable, "trainers/study.py",
                             "--config=configs/study.py:tiny", f"--workdir={workdir}",
                             "--status"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stderr[-2000:]
    assert "0/9 cells done" in status.stdout and "1 running" in status.stdout
    assert "running: pretrain:adversarial -- gpu-node-7:4242 (job 31337)" in status.stdout
    assert "transfer  2 waiting" in status.stdout or "6 waiting" in status.stdout


def test_status_of_a_finished_study(tiny_study):
    workdir, _, _ = tiny_study
    out = subprocess.run([sys.executable, "trainers/study.py", "--config=configs/study.py:tiny",
                          f"--workdir={workdir}", "--status"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{workdir}: 9/9 cells done" in out.stdout and "transfer  6 done" in out.stdout


@pytest.mark.slow  # ~3 min: the whole tiny study through submitit's local executor
def test_the_local_launcher_runs_each_cell_once_and_resubmits_a_killed_job(tiny_study,
                                                                          tmp_path):
    reference, _, _ = tiny_study
    workdir = tmp_path / "study"
    command = [sys.executable, "trainers/study.py", "--config=configs/study.py:tiny",
               f"--workdir={workdir}", "--launcher=submitit", "--config.launcher.cluster=local",
               "--config.launcher.max_parallel=2",
               "--config.transfer.adversarial.checkpoint_every_steps=1"]
    launcher_proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
    # Kill the job computing the first adversarial transfer once it has a step checkpoint.
    deadline, killed = time.time() + 600, None
    while killed is None and time.time() < deadline and launcher_proc.poll() is None:
        for state in glob.glob(str(workdir / "cells" / "transfer_*" / "checkpoints" /
                                   "checkpoint")):
            cell = os.path.dirname(os.path.dirname(state))
            lease = os.path.join(cell, leases.LEASE_FILE)
            if os.path.exists(lease):
                pid = json.load(open(lease))["pid"]
                os.kill(pid, signal.SIGKILL)
                killed = cell
                break
        time.sleep(0.1)
    out, err = launcher_proc.communicate(timeout=1800)
    assert launcher_proc.returncode == 0, err[-3000:]
    assert killed, out[-3000:]
    assert "resubmitting (attempt 2)" in out
    logs = "".join(open(p).read() for p in glob.glob(str(workdir / "jobs" / "*_log.out")))
    computed = _computed_cells(logs)
    counts = collections.Counter(computed)  # every cell once; the killed one twice
    assert len(counts) == 8 and counts[killed] == 2  # the killed cell: started twice
    assert all(n == 1 for cell, n in counts.items() if cell != killed)
    _assert_same_results(workdir, reference)


def test_slurm_jobs_get_their_resources_and_afterok_dependencies(tmp_path, monkeypatch):
    """No SLURM cluster is reachable here: a stand-in `sbatch` records what submitit's own
    SlurmExecutor submits, and the jobs are read back through submitit's API."""
    import submitit  # pylint: disable=import-outside-toplevel
    from dwlt_tf import launcher  # pylint: disable=import-outside-toplevel
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\nn=$(cat \"$0.count\" 2>/dev/null || echo 1000)\nn=$((n + 1))\n"
        "echo $n > \"$0.count\"\necho \"Submitted batch job $n\"\n")
    (bin_dir / "sbatch").chmod(0o755)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit checks it exists
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    config = load_config("study", "tiny")
    config.launcher.update(dict(cluster="slurm", partition="gpu-test", gpus_per_cell=1,
                                cpus_per_cell=8, mem_gb=32, timeout_min=120,
                                slurm={"account": "robust-lab"}))
    workdir = str(tmp_path / "study")
    jobs = launcher.launch(config, study.study_spec(config), workdir, log=lambda *_: None)
    graph = study.Study(config, workdir, log=lambda *_: None).graph
    assert set(jobs) == set(graph.cells) | {launcher.ASSEMBLE}
    for address, job in jobs.items():
        script = job.paths.submission_file.read_text()
        assert "#SBATCH --partition=gpu-test" in script and "#SBATCH --account=robust-lab" in script
        assert "#SBATCH --time=120" in script and "#SBATCH --cpus-per-task=8" in script
        assert "submitit.core._submit" in script
        if address != launcher.ASSEMBLE:
            assert "#SBATCH --gpus-per-node=1" in script
            delayed = job.submission()  # the pickled job, as the node will run it
            assert isinstance(delayed.function, launcher.CellJob)
            assert delayed.function.address == address and delayed.function.workdir == workdir
        needs = graph[address].needs if address != launcher.ASSEMBLE else tuple(graph.cells)
        ids = sorted(jobs[n].job_id for n in needs)
        if ids:
            assert f"#SBATCH --dependency=afterok:{':'.join(ids)}" in script, (address, script)
        else:
            assert "--dependency" not in script
    # Dense transfers: one array after the pre-training; the tickets' transfers another.
    dense = [jobs[c.address].job_id for c in graph.of_kind("transfer") if c.method == "dense"]
    assert len({i.split("_")[0] for i in dense}) == 1 and all("_" in i for i in dense)
    assert isinstance(jobs["pretrain:adversarial"], submitit.SlurmJob)


def test_random_baselines_draw_a_mask_per_seed(tiny_study, tmp_path):
    workdir, _, _ = tiny_study
    copy = str(shutil.copytree(workdir, tmp_path / "study"))
    config = load_config("study", "tiny")
    config.seeds = (1, 2)
    config.pruning.update(dict(methods=("imp", "random"), rounds=(2,)))
    config.export.enabled = False
    used = []

    def fake_transfer(pretrained, ticket, dataset, spec, cell, *args, **kwargs):
        used.append((ticket, spec.seed))
        best = train.CheckpointResult("best_sa", 0, 50.0, 20.0, 50.0, 20.0)
        return _fake_result(cell, best)
    with mock.patch.object(train, "_train", side_effect=AssertionError("retrained")), \
            mock.patch.object(transfer, "run", side_effect=fake_transfer):
        study.run(config, copy, log=lambda *_: None)
    random_tickets = {}
    for path in glob.glob(os.path.join(copy, "cells", "baseline_*", "ticket")):
        masks, meta = tickets.load(path)
        random_tickets[path] = masks
    assert len(random_tickets) == 2  # one per seed, each its own cell
    (a, b) = random_tickets.values()
    assert sum(int((~m).sum()) for m in a.values()) == sum(int((~m).sum()) for m in b.values())
    assert any((a[n] != b[n]).any() for n in a)  # other masks, the same sparsity
    # Each seed's transfers of the random ticket use that seed's mask.
    by_ticket = collections.defaultdict(set)
    for ticket, seed in used:
        if ticket in random_tickets:
            by_ticket[ticket].add(seed)
    assert sorted(map(sorted, by_ticket.values())) == [[1], [2]]
