"""The double-win study: pre-train (or convert), find tickets with IMP, transfer each
ticket and the dense model under standard and adversarial training, report, export.

Every unit of work is a *cell* named by a hash of exactly what determines its result
(open_lth style, `identity.py`): result-affecting settings that differ from their
defaults, the input weights and tickets by content, the data by a fingerprint of its
content -- not verbosity, checkpoint cadence, evaluation batch size or where the data
lives. `<workdir>/cells/<kind>_<hash>/run.json` records that identity and the cell's
run writes its results next to it. A second run of the same study finds finished cells
and never recomputes them; an interrupted cell resumes from its own checkpoints;
changing one hyperparameter reruns exactly the cells it affects. Everything the study
needs -- every stage's spec, the pre-trained weights, every dataset -- is checked
before the first step.

Cells, in order: `pretrain` (only for pre-trainings trained here, e.g. the quickstart;
others come from converted checkpoints), `imp` (tickets of one pre-training on the
source task), `transfer` (one pre-training x ticket-or-dense x dataset x data rate x
regime). Then `results.csv`, `results.json`, `report.md`, `plots/*.png` and the
exported SavedModel of the sparsest double-win ticket in `<workdir>/export/<version>`
(if that version already holds another selection, the next free version, and the
report says which).
"""
import dataclasses
import os
from typing import Dict, List, Optional

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)

from dwlt_tf import config as cfg
from dwlt_tf import (convert, data, export, files, identity, imp, report, tickets, train,
                     transfer)

TOP_LEVEL = ("model", "source", "pretrainings", "imp", "tickets", "downstream", "transfer",
             "report", "export", "runtime")
PRETRAINING_KEYS = ("path", "train", "imp_mode", "init")
REGIMES = report.REGIMES


@dataclasses.dataclass
class Plan:
    """The validated study: typed specs for every stage."""
    model: cfg.ModelSpec
    source: data.DataSpec
    pretrainings: Dict[str, dict]          # name -> {path, train: TrainSpec|None, imp: TrainSpec}
    imp: imp.ImpSpec
    ticket_rounds: List[int]
    datasets: List[data.DataSpec]          # one per (dataset, data rate)
    transfer: Dict[str, train.TrainSpec]   # "<regime>" or "<regime>:<dataset>" -> spec
    tolerance: float
    export: dict


def plan(config) -> Plan:
    """Validates a study config (see configs/study.py) before any work starts."""
    cfg.check_keys(config, TOP_LEVEL, "config")
    model = cfg.model_spec(config.model)
    source = cfg.data_spec(config.source, "source")
    imp_spec = cfg.imp_spec(config.imp)
    imp_train = config.imp.train
    pretrainings = {}
    names = list(cfg.to_dict(config.pretrainings))
    if not names:
        raise cfg.ConfigError("pretrainings: at least one pre-training is needed")
    for name in names:
        section = config.pretrainings[name]
        cfg.check_keys(section, PRETRAINING_KEYS, f"pretrainings.{name}")
        path = os.path.expandvars(os.path.expanduser(section.get("path") or ""))
        trained = cfg.to_dict(section.get("train") or {})
        if bool(path) == bool(trained):
            raise cfg.ConfigError(f"pretrainings.{name}: give either `path` (converted or "
                                  f"PyTorch weights) or a `train` section, not "
                                  f"{'both' if path else 'neither'}")
        if path:
            _check_pretrained_path(path, model, f"pretrainings.{name}.path={path!r}")
        imp_mode = section.get("imp_mode", "standard")
        imp_section = cfg.to_dict(imp_train)
        imp_section["mode"] = imp_mode
        init = section.get("init") or ""
        if init and (init not in names or init == name or not trained):
            raise cfg.ConfigError(f"pretrainings.{name}.init={init!r}: must name another "
                                  f"pre-training (one of {names}) and needs a `train` section")
        pretrainings[name] = {
            "init": init or None,
            "path": path or None,
            "train": cfg.train_spec(trained, f"pretrainings.{name}.train") if trained else None,
            "imp": cfg.train_spec(imp_section, "imp.train"),
        }
    rounds = list(config.tickets) if config.tickets else list(range(1, imp_spec.rounds + 1))
    bad = [k for k in rounds if not 1 <= k <= imp_spec.rounds]
    if bad:
        raise cfg.ConfigError(f"tickets={rounds}: rounds {bad} outside 1..imp.rounds="
                              f"{imp_spec.rounds}")
    cfg.check_keys(config.downstream, ("datasets", "data_rates", "dataset"), "downstream")
    datasets = []
    for name in config.downstream.datasets:
        for rate in config.downstream.data_rates:
            section = cfg.to_dict(config.downstream.dataset)
            section.update(name=name, data_rate=rate)
            datasets.append(cfg.data_spec(section, f"downstream[{name}, rate {rate}]"))
    transfer_specs = {}
    for key, section in cfg.to_dict(config.transfer).items():
        regime = key.split(":")[0]
        if regime not in REGIMES:
            raise cfg.ConfigError(f"transfer.{key}: unknown regime; use 'standard', "
                                  "'adversarial' or '<regime>:<dataset>'")
        spec = cfg.train_spec(section, f"transfer.{key}")
        if (regime == "standard") != (spec.mode == "standard"):
            raise cfg.ConfigError(f"transfer.{key}.mode={spec.mode!r} does not fit the "
                                  f"{regime} regime")
        # The verdicts compare test SA and test RA of every transfer.
        if not spec.test:
            raise cfg.ConfigError(f"transfer.{key}.test=False: the study compares every "
                                  "transfer's test SA and RA; keep test=True")
        if spec.eval_attack is None:
            raise cfg.ConfigError(f"transfer.{key}.eval_attack is empty: the study needs "
                                  "RA (e.g. PGD-20: {eps: 8/255, step_size: 2/255, steps: 20})")
        transfer_specs[key] = spec
    for regime in REGIMES:
        if regime not in transfer_specs:
            raise cfg.ConfigError(f"transfer.{regime}: missing")
    for key in transfer_specs:
        if ":" in key and key.split(":", 1)[1] not in config.downstream.datasets:
            raise cfg.ConfigError(f"transfer.{key}: dataset {key.split(':', 1)[1]!r} is not "
                                  f"among downstream.datasets={list(config.downstream.datasets)}")
    if not datasets:
        raise cfg.ConfigError("downstream: no datasets or no data_rates to transfer to")
    cfg.check_keys(config.report, ("tolerance",), "report")
    tolerance = config.report.tolerance
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise cfg.ConfigError(f"report.tolerance={tolerance!r}: must be a number >= 0 "
                              "(percentage points)")
    cfg.check_keys(config.export, ("enabled", "version", "tflite"), "export")
    export_config = cfg.to_dict(config.export)
    version = export_config.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise cfg.ConfigError(f"export.version={version!r}: must be a positive int")
    return Plan(model, source, pretrainings, imp_spec, rounds, datasets, transfer_specs,
                float(tolerance), export_config)


def _check_pretrained_path(path, model, where):
    """Converted weights must exist and fit the study's model; PyTorch files must exist."""
    if not os.path.exists(path):
        raise cfg.ConfigError(f"{where}: no such file or directory (convert weights with "
                              "trainers/convert_weights.py)")
    if os.path.isdir(path):
        try:
            meta = convert.load_meta(path)
        except convert.CheckpointError as e:
            raise cfg.ConfigError(f"{where}: {e}") from None
        theirs = (meta["arch"], meta["stem"], meta["base_width"])
        ours = (model.arch, model.stem, model.base_width)
        if theirs != ours:
            raise cfg.ConfigError(
                f"{where} holds a {theirs[0]} ({theirs[1]} stem, width {theirs[2]}), but "
                f"model is {ours[0]} ({ours[1]} stem, width {ours[2]})")


class Study:
    """Runs a planned study in `workdir` (resumable; finished cells are reused)."""

    def __init__(self, config, workdir, strategy=None, log=print):
        self.plan = plan(config)
        self.config = config
        self.workdir = os.path.abspath(workdir)
        self.strategy = strategy
        self.log = log
        self._splits = {}

    # ------------------------------------------------------------------ helpers
    def _cell(self, kind, cell_identity):
        """The directory of the cell with this identity (claimed: see identity.claim)."""
        key = identity.key(cell_identity)
        path = os.path.join(self.workdir, "cells", f"{kind}_{key}")
        identity.claim(path, cell_identity, what=f"{kind} cell")
        return path, key

    def _load(self, spec):
        if spec not in self._splits:
            self._splits[spec] = data.load(spec)
        return self._splits[spec]

    def _transfer_spec(self, regime, dataset_name):
        return self.plan.transfer.get(f"{regime}:{dataset_name}", self.plan.transfer[regime])

    def check_data(self):
        """Loads the source and every downstream dataset: missing data fails now."""
        for spec in [self.plan.source] + self.plan.datasets:
            self._load(spec)

    # ------------------------------------------------------------------- stages
    def pretrained(self, name):
        """Directory of converted-format pre-trained weights (theta0) for `name`."""
        entry = self.plan.pretrainings[name]
        if entry["path"] and os.path.isdir(entry["path"]):
            return entry["path"]
        if entry["path"]:  # a PyTorch checkpoint: convert once
            cell, _ = self._cell("convert", {
                "kind": "convert", "checkpoint_sha256": convert.file_sha256(entry["path"]),
                "model": identity.describe(self.plan.model)})
            out = os.path.join(cell, "weights")
            if not os.path.exists(out):
                self.log(f"[convert] {name}: {entry['path']}")
                convert.save_converted(out, convert.convert(
                    entry["path"], self.plan.model.arch, self.plan.model.stem))
            return out
        init_dir = self.pretrained(entry["init"]) if entry["init"] else None
        init = convert.weights_identity(convert.load_meta(init_dir)) if init_dir else None
        splits = self._load(self.plan.source)
        inputs = {"kind": "pretrain", "model": identity.describe(self.plan.model), "init": init}
        cell, key = self._cell("pretrain", train.run_identity(entry["train"], splits.identity,
                                                              inputs))
        out = os.path.join(cell, "weights")
        if os.path.exists(out):
            return out
        self.log(f"[pretrain] {name} on {self.plan.source.label} ({entry['train'].mode}) "
                 f"-> {cell}")
        mean, std = splits.spec.mean_std
        init_weights = convert.load_converted(init_dir).model.get_weights() if init_dir else None

        def build():
            import tf_keras  # pylint: disable=import-outside-toplevel
            tf_keras.utils.set_random_seed(entry["train"].seed)
            model = self.plan.model.build(splits.num_classes, mean, std)
            if init_weights is not None:  # continue from another pre-training
                model.set_weights(init_weights)
            return model
        result = train.fit(build, splits, entry["train"], os.path.join(cell, "train"),
                           self.strategy, inputs=inputs)
        meta = {"source": os.path.join(cell, "train"),
                "source_sha256": convert.weights_sha256(result.model),
                "format": "dwlt_tf", "pretraining": name, "arch": self.plan.model.arch,
                "stem": self.plan.model.stem, "base_width": self.plan.model.base_width,
                "num_classes": splits.num_classes, "mean": list(mean), "std": list(std),
                "normalization": "dataset", "masked": False, "cell": key,
                "dwlt_tf_version": dwlt_tf.__version__}
        convert.save_converted(out, convert.Converted(result.model, {}, meta))
        return out

    def find_tickets(self, name, pretrained_dir):
        entry = self.plan.pretrainings[name]
        meta = convert.load_meta(pretrained_dir)
        splits = self._load(self.plan.source)
        weights = convert.weights_identity(meta)
        cell, key = self._cell("imp", imp.run_identity(entry["imp"], self.plan.imp,
                                                       splits.identity, weights))
        paths = [imp.ticket_dir(cell, k) for k in range(1, self.plan.imp.rounds + 1)]
        if not all(tickets.is_ticket(p) for p in paths):
            self.log(f"[imp] {name}: {self.plan.imp.rounds} tickets ({entry['imp'].mode} "
                     f"training) -> {cell}")
            paths = imp.run(lambda: convert.load_converted(pretrained_dir).model, splits,
                            entry["imp"], self.plan.imp, cell, self.strategy,
                            meta={"pretraining": name, "imp_cell": key,
                                  "source_sha256": meta["source_sha256"], "arch": meta["arch"]},
                            pretrained=weights)
        return {k: paths[k - 1] for k in self.plan.ticket_rounds}

    def transfer_cell(self, name, pretrained_dir, ticket, ticket_dir, dataset, regime):
        spec = self._transfer_spec(regime, dataset.name)
        splits = self._load(dataset)
        cell, _ = self._cell("transfer", transfer.run_identity(pretrained_dir, ticket_dir,
                                                               splits.identity, spec))
        result_path = os.path.join(cell, train.RESULT_FILE)
        if os.path.exists(result_path):  # finished: read, don't rebuild anything
            result = train.TrainResult.from_json(files.read_json(result_path))
        else:
            self.log(f"[transfer] {name} / {ticket} -> {dataset.label} (rate "
                     f"{dataset.data_rate:g}, {regime}) -> {cell}")
            result = transfer.run(pretrained_dir, ticket_dir, dataset, spec, cell,
                                  self.strategy, splits=splits)
        sparsity = 0.0 if ticket_dir is None else tickets.load(ticket_dir)[1]["sparsity"]
        return {"pretraining": name, "dataset": dataset.label, "data_rate": dataset.data_rate,
                "regime": regime, "ticket": ticket, "sparsity": sparsity,
                "sa": result.best_sa.test_sa, "ra": result.best_ra.test_ra,
                "sa_ckpt_test_ra": result.best_sa.test_ra,
                "ra_ckpt_test_sa": result.best_ra.test_sa,
                "val_sa": result.best_sa.val_sa, "val_ra": result.best_ra.val_ra,
                "ra_attack": report.attack_label(result.eval_attack),
                "cell": os.path.relpath(cell, self.workdir)}

    # --------------------------------------------------------------------- run
    def run(self):
        self.check_data()
        rows = []
        for name in self.plan.pretrainings:
            pretrained_dir = self.pretrained(name)
            ticket_dirs = self.find_tickets(name, pretrained_dir)
            candidates = [("dense", None)] + [(f"round {k}", d) for k, d in ticket_dirs.items()]
            for dataset in self.plan.datasets:
                for ticket, ticket_dir in candidates:
                    for regime in REGIMES:
                        rows.append(self.transfer_cell(name, pretrained_dir, ticket,
                                                       ticket_dir, dataset, regime))
        summary = report.analyze(rows, self.plan.tolerance)
        report.write_tables(rows, self.workdir)
        report.plot(rows, summary, self.workdir)
        note = self._export(rows, summary) if self.plan.export.get("enabled", True) else None
        text = report.markdown(rows, summary, self.plan.tolerance, note)
        files.write_text(os.path.join(self.workdir, "report.md"), text)
        files.write_json(os.path.join(self.workdir, "summary.json"),
                         {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in summary.items()})
        return rows, summary

    def _export(self, rows, summary):
        """Exports the chosen ticket; returns the report's sentence on what is where."""
        row, reason = report.choose_export(rows, summary)
        if row is None:
            return reason
        run = transfer.open_run(os.path.join(self.workdir, row["cell"]))
        export_dir = os.path.join(self.workdir, "export")
        version = int(self.plan.export.get("version", 1))
        existing = export.exported_info(export_dir, version)
        source = (existing or {}).get("source_run", {})
        if source.get("key") == run.key and source.get("checkpoint") == "best_ra":
            return (f"`export/{version}` holds {reason} (adversarial transfer, best-RA "
                    f"checkpoint: test SA {_pct(existing['test_sa'])}, RA "
                    f"{_pct(existing['test_ra'])}), exported by an earlier run of this study.")
        prefix = ""
        if os.path.exists(os.path.join(export_dir, str(version))):
            taken = version
            version = export.next_version(export_dir)
            what = (f"an earlier selection ({existing.get('selection', 'unknown')})"
                    if existing else "something that is not a complete export")
            prefix = (f"`export/{taken}` already holds {what} and was left as it is; ")
        _, info = export.export_run(run, export_dir, version, which="ra",
                                    tflite=self.plan.export.get("tflite", False),
                                    extra={"selection": reason}, splits=self._load(run.dataset),
                                    log=self.log)
        return (f"{prefix}Exported {reason} (adversarial transfer, best-RA checkpoint: test SA "
                f"{_pct(info['test_sa'])}, RA {_pct(info['test_ra'])}) to `export/{version}`.")


def _pct(value):
    return "–" if value is None else f"{value:.2f}%"


def run(config, workdir, strategy=None, log=print):
    """Plans (validates), runs and reports the study. Returns (rows, summary)."""
    return Study(config, workdir, strategy, log).run()
