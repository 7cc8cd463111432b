"""Tune transfer hyperparameters with keras-tuner, through dwlt_tf's own training loop.

keras-tuner builds and fits Keras models by default (and 1.4.8 refuses tf_keras models
there); our training is a custom adversarial loop, so tuning goes through the tuner's
trial API: `TransferTuner.run_trial` turns the trial's hyperparameters into a
`TrainSpec`, runs `transfer.run` (standard or adversarial) in the trial's own resumable
workdir with `test=False` -- tuning never touches the test split -- and returns the
validation metrics. Oracles: random, bayesian, hyperband (hyperband's epoch budget
becomes `train.epochs`).

Search spaces are declared in the config (`tune.space`), one entry per TrainSpec field:
{"type": "float"|"int", "min", "max", "sampling": "linear"|"log"} or
{"type": "choice", "values": [...]}. The objective is `val_sa`, `val_ra` or `weighted`
(`tune.weights`: {"sa": w1, "ra": w2}). Everything is checked before the first trial.

Outputs in the workdir: keras-tuner's state (`tuner/`; an interrupted search resumes and
does not rerun finished trials), `trials.csv`, and `best.flags`, a flagfile of config
overrides that `trainers/transfer.py --flagfile=best.flags` accepts. The workdir belongs
to one search (`identity.claim`: base spec, data, weights, ticket, search space, oracle,
objective and seed); `max_trials` is not part of it, so raising it extends a search.

Many workers: keras-tuner's own distributed mode. Every process runs the same command
on a shared workdir with `KERASTUNER_TUNER_ID` (`chief`, or a worker's id),
`KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT` set: the chief serves the oracle and
waits, each worker runs the trials the oracle hands it, and when the oracle has no trial
left the workers return and the chief writes `trials.csv` and `best.flags`.
"""
import csv
import dataclasses
import io
import os

import numpy as np

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import keras_tuner
from keras_tuner.engine import base_tuner

from dwlt_tf import config as cfg
from dwlt_tf import checks, data, files, identity, report, runs, train, transfer

OBJECTIVES = ("val_sa", "val_ra", "weighted")
SAMPLINGS = ("linear", "log", "reverse_log")
ORACLES = ("random", "bayesian", "hyperband")
_TUNABLE = {f.name for f in dataclasses.fields(train.TrainSpec)} - {
    "attack", "eval_attack", "mode", "test", "verbose", "precision", "milestones"}


TUNE_KEYS = ("oracle", "objective", "weights", "space", "max_trials", "max_epochs", "seed")


def role():
    """"chief", "worker" (keras-tuner's distributed mode, from its documented environment
    variables) or "single"."""
    if not os.environ.get("KERASTUNER_ORACLE_IP"):
        return "single"
    missing = [v for v in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID")
               if not os.environ.get(v)]
    if missing:
        raise cfg.ConfigError(f"KERASTUNER_ORACLE_IP is set but {' and '.join(missing)} "
                              "not: distributed tuning needs all three (see README)")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def validate(tune_config, base_spec):
    """The tune section as a plain dict, every value checked before any work."""
    cfg.check_keys(tune_config, TUNE_KEYS, "tune")
    tc = cfg.to_dict(tune_config)
    checks.positive_int("tune.max_trials", tc.get("max_trials", 10))
    checks.positive_int("tune.max_epochs", tc.get("max_epochs", 4))
    checks.seed("tune.seed", tc.get("seed", 1))
    weights = tc.get("weights") or {}
    if not isinstance(weights, dict) or set(weights) - {"sa", "ra"} or any(
            not checks.is_number(w) or w < 0 for w in weights.values()):
        raise cfg.ConfigError(f"tune.weights={weights!r}: give {{'sa': w1, 'ra': w2}} with "
                              "numbers >= 0")
    validate_space(tc.get("space"), tc.get("objective", "val_sa"), weights, base_spec,
                   tc.get("oracle", "random"))
    return tc


def validate_space(space, objective, weights, base_spec, oracle):
    """Checks the search space and objective before any trial runs."""
    space = cfg.to_dict(space)
    if not space:
        raise cfg.ConfigError("tune.space: empty; declare at least one hyperparameter")
    if oracle not in ORACLES:
        raise cfg.ConfigError(f"tune.oracle={oracle!r}: choose one of {ORACLES}")
    for name, entry in space.items():
        where = f"tune.space.{name}"
        if name not in _TUNABLE:
            raise cfg.ConfigError(f"{where}: unknown hyperparameter (tunable: {sorted(_TUNABLE)})")
        if oracle == "hyperband" and name == "epochs":
            raise cfg.ConfigError(f"{where}: hyperband sets epochs itself (tune.max_epochs)")
        kind = entry.get("type")
        if kind in ("float", "int"):
            if not entry.get("min", 0) < entry.get("max", 0):
                raise cfg.ConfigError(f"{where}: empty range min={entry.get('min')!r} "
                                      f"max={entry.get('max')!r}")
            sampling = entry.get("sampling", "linear")
            if sampling not in SAMPLINGS:
                raise cfg.ConfigError(f"{where}.sampling={sampling!r}: choose one of "
                                      f"{SAMPLINGS}")
            if sampling == "log" and entry["min"] <= 0:
                raise cfg.ConfigError(f"{where}: log sampling needs min > 0, got {entry['min']}")
        elif kind == "choice":
            if not entry.get("values"):
                raise cfg.ConfigError(f"{where}: empty choice")
        else:
            raise cfg.ConfigError(f"{where}.type={kind!r}: use float, int or choice")
    if objective not in OBJECTIVES:
        raise cfg.ConfigError(f"tune.objective={objective!r}: choose one of {OBJECTIVES}")
    needs_ra = objective == "val_ra" or (objective == "weighted" and cfg.to_dict(weights).get("ra"))
    if needs_ra and (base_spec.eval_attack is None or not base_spec.select_ra):
        raise cfg.ConfigError(f"tune.objective={objective!r} needs validation RA, which "
                              "train.eval_attack/select_ra do not produce")
    return space


def _declare(hp, space):
    for name, entry in space.items():
        if entry["type"] == "float":
            hp.Float(name, entry["min"], entry["max"], sampling=entry.get("sampling", "linear"))
        elif entry["type"] == "int":
            hp.Int(name, entry["min"], entry["max"], sampling=entry.get("sampling", "linear"))
        else:
            hp.Choice(name, list(entry["values"]))


class TransferTuner(base_tuner.BaseTuner):
    """keras-tuner trials that each run one dwlt_tf transfer."""

    def __init__(self, oracle, pretrained, ticket, dataset, base_spec, objective, weights,
                 workdir, strategy=None, splits=None, **kwargs):
        super().__init__(oracle=oracle, directory=workdir, project_name="tuner", **kwargs)
        self.pretrained, self.ticket, self.dataset = pretrained, ticket, dataset
        self.base_spec, self.objective_name, self.weights = base_spec, objective, weights
        self.workdir, self.strategy = workdir, strategy
        self.splits = splits or data.load(dataset)
        self.trials_run = []

    def spec_for(self, values):
        values = {k: v for k, v in values.items() if not k.startswith("tuner/")}
        if "epochs" not in values and "tuner/epochs" in values:
            values["epochs"] = values["tuner/epochs"]
        return dataclasses.replace(self.base_spec, test=False, **values)

    def run_trial(self, trial, *args, **kwargs):
        hp = dict(trial.hyperparameters.values)
        if "tuner/epochs" in hp:
            hp["epochs"] = int(hp["tuner/epochs"])
        spec = self.spec_for(hp)
        self.trials_run.append(trial.trial_id)
        result = transfer.run(self.pretrained, self.ticket, self.dataset, spec,
                              os.path.join(self.workdir, "trials", trial.trial_id),
                              self.strategy, splits=self.splits)
        val_sa = result.best_sa.val_sa
        val_ra = result.best_ra.val_ra
        metrics = {"val_sa": val_sa}
        if val_ra is not None:
            metrics["val_ra"] = val_ra
        metrics["weighted"] = (self.weights.get("sa", 0.0) * val_sa
                               + self.weights.get("ra", 0.0) * (val_ra or 0.0))
        return metrics

    # BaseTuner's model hooks: there is no Keras model to save per trial (each trial's
    # workdir already holds its checkpoints).
    def save_model(self, trial_id, model, step=0):
        del trial_id, model, step

    def load_model(self, trial):
        raise NotImplementedError("Trial models live in <workdir>/trials/<trial_id>")


def make_oracle(kind, objective, max_trials, seed, max_epochs=None):
    goal = keras_tuner.Objective(objective, direction="max")
    if kind == "random":
        return keras_tuner.oracles.RandomSearchOracle(goal, max_trials=max_trials, seed=seed)
    if kind == "bayesian":
        return keras_tuner.oracles.BayesianOptimizationOracle(goal, max_trials=max_trials,
                                                              seed=seed)
    return keras_tuner.oracles.HyperbandOracle(goal, max_epochs=max_epochs, seed=seed)


def search(pretrained, ticket, dataset, base_spec, tune_config, workdir, strategy=None,
           overwrite=False):
    """Runs (or resumes) a search; returns (rows, best_values, tuner).

    In keras-tuner's distributed mode (`role`), a worker returns ([], None, tuner) once
    the oracle has no trial left for it; the chief returns the whole search's rows and
    writes the outputs.
    """
    tc = validate(tune_config, base_spec)
    space = cfg.to_dict(tc["space"])
    distributed_role = role()
    splits = data.load(dataset)
    source, masks, _ = transfer.load_inputs(pretrained, ticket)  # bad ones: before the claim
    searched = {"kind": "tune", "tune": {k: v for k, v in tc.items() if k != "max_trials"}}
    search_identity = dict(train.run_identity(base_spec, splits.identity, runs.inputs(
        source.meta, masks), strategy), **searched)
    resolved = dict(train.run_identity(base_spec, splits.identity, runs.inputs(
        source.meta, masks), strategy, full=True), **searched)
    identity.claim(workdir, search_identity, overwrite, "tuning search", resolved=resolved)
    oracle = make_oracle(tc.get("oracle", "random"), tc.get("objective", "val_sa"),
                         tc.get("max_trials", 10), tc.get("seed", 1), tc.get("max_epochs", 4))
    _declare(oracle.hyperparameters, space)
    tuner = TransferTuner(oracle, pretrained, ticket, dataset, base_spec,
                          tc.get("objective", "val_sa"), tc.get("weights", {}) or {}, workdir,
                          strategy, splits=splits)
    tuner.search()
    tuner.trials_run_this_call = list(tuner.trials_run)
    if distributed_role == "worker":  # the chief holds the oracle and writes the outputs
        return [], None, tuner
    rows = []
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id):
        row = {"trial": trial.trial_id, "status": str(trial.status),
               "score": trial.score}
        row.update({k: v for k, v in trial.hyperparameters.values.items()})
        for metric in ("val_sa", "val_ra", "weighted"):
            if trial.metrics.exists(metric):
                row[metric] = trial.metrics.get_last_value(metric)
        if "val_ra" in row:  # every reported RA names the attack behind it
            row["ra_attack"] = report.attack_label(
                train.attack_description(base_spec.eval_attack))
        rows.append(row)
    best = tuner.oracle.get_best_trials(1)[0]
    best_values = {k: v for k, v in best.hyperparameters.values.items()}
    if "tuner/epochs" in best_values:
        best_values["epochs"] = int(best_values["tuner/epochs"])
    best_values = {k: v for k, v in best_values.items() if not k.startswith("tuner/")}
    _write_outputs(rows, best_values, best, workdir)
    return rows, best_values, tuner


_LEADING_COLUMNS = ("trial", "status", "score", "val_sa", "val_ra", "weighted", "ra_attack")


def _write_outputs(rows, best_values, best, workdir):
    """trials.csv (trial, status, score, metrics, then hyperparameters by name) and
    best.flags; each written only when its content changes (read-only copies)."""
    present = {key for row in rows for key in row}
    columns = [c for c in _LEADING_COLUMNS if c in present] + sorted(
        present - set(_LEADING_COLUMNS))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _plain(v) for k, v in row.items()})
    files.update_text(os.path.join(workdir, "trials.csv"), buffer.getvalue())
    lines = [f"# best trial {best.trial_id}: score {_plain(best.score)}"]
    lines += [f"--config.train.{k}={v!r}" if isinstance(v, str) else f"--config.train.{k}={v}"
              for k, v in sorted(best_values.items())]
    files.update_text(os.path.join(workdir, "best.flags"), "\n".join(lines) + "\n")


def _plain(value):
    """Numbers as Python numbers: a trial computed now may hold numpy scalars whose text
    differs from the same value reloaded from keras-tuner's JSON (`update_text` would then
    rewrite an unchanged table)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value


def summary(rows):
    """A printable table of the trials."""
    columns = [c for c in ("trial", "status", "score", "val_sa", "val_ra") if any(
        c in r for r in rows)]
    params = sorted({k for r in rows for k in r} - set(columns) - {"weighted", "ra_attack"})
    header = columns + params
    lines = [" | ".join(header)]
    for r in rows:
        lines.append(" | ".join(f"{r.get(c):.4g}" if isinstance(r.get(c), float) else
                                str(r.get(c, "")) for c in header))
    return "\n".join(lines)
