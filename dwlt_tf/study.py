"""The double-win study: pre-train (or convert), find tickets with IMP, transfer each
ticket and the dense model under standard and adversarial training, report, export.

Every unit of work is a *cell* named by a hash of everything that determines its result
(open_lth style): `<workdir>/cells/<kind>_<hash>/` holds `cell.json` (its full
configuration) and, once finished, its results. A second run of the same study finds
finished cells and never recomputes them; an interrupted cell resumes from its own
checkpoints; changing one hyperparameter reruns exactly the cells it affects.

Cells, in order: `pretrain` (only for pre-trainings trained here, e.g. the quickstart;
others come from converted checkpoints), `imp` (tickets of one pre-training on the
source task), `transfer` (one pre-training x ticket-or-dense x dataset x data rate x
regime). Then `results.csv`, `results.json`, `report.md`, `plots/*.png` and the
exported SavedModel of the sparsest double-win ticket in `<workdir>/export/<version>`.
"""
import dataclasses
import os
from typing import Dict, List, Optional

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)

from dwlt_tf import config as cfg
from dwlt_tf import (convert, data, export, files, imp, report, tickets, train, transfer)

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
        path = section.get("path") or ""
        trained = cfg.to_dict(section.get("train") or {})
        if bool(path) == bool(trained):
            raise cfg.ConfigError(f"pretrainings.{name}: give either `path` (converted or "
                                  f"PyTorch weights) or a `train` section, not "
                                  f"{'both' if path else 'neither'}")
        if path and not os.path.exists(os.path.expanduser(path)):
            raise cfg.ConfigError(f"pretrainings.{name}.path={path!r}: no such file or "
                                  "directory (convert weights with trainers/convert_weights.py)")
        imp_mode = section.get("imp_mode", "standard")
        imp_section = cfg.to_dict(imp_train)
        imp_section["mode"] = imp_mode
        init = section.get("init") or ""
        if init and (init not in names or init == name or not trained):
            raise cfg.ConfigError(f"pretrainings.{name}.init={init!r}: must name another "
                                  f"pre-training (one of {names}) and needs a `train` section")
        pretrainings[name] = {
            "init": init or None,
            "path": os.path.expanduser(path) if path else None,
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
        transfer_specs[key] = spec
    for regime in REGIMES:
        if regime not in transfer_specs:
            raise cfg.ConfigError(f"transfer.{regime}: missing")
    cfg.check_keys(config.report, ("tolerance",), "report")
    cfg.check_keys(config.export, ("enabled", "version", "tflite"), "export")
    return Plan(model, source, pretrainings, imp_spec, rounds, datasets, transfer_specs,
                float(config.report.tolerance), cfg.to_dict(config.export))


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
    def _cell(self, kind, *parts):
        key = cfg.fingerprint(kind, *parts)
        path = os.path.join(self.workdir, "cells", f"{kind}_{key}")
        os.makedirs(path, exist_ok=True)
        if not os.path.exists(os.path.join(path, "cell.json")):
            files.write_json(os.path.join(path, "cell.json"),
                             {"kind": kind, "key": key, "config": parts})
        return path, key

    def _load(self, spec):
        if spec not in self._splits:
            self._splits[spec] = data.load(spec)
        return self._splits[spec]

    def _transfer_spec(self, regime, dataset_name):
        return self.plan.transfer.get(f"{regime}:{dataset_name}", self.plan.transfer[regime])

    # ------------------------------------------------------------------- stages
    def pretrained(self, name):
        """Directory of converted-format pre-trained weights (theta0) for `name`."""
        entry = self.plan.pretrainings[name]
        if entry["path"] and os.path.isdir(entry["path"]):
            return entry["path"]
        if entry["path"]:  # a PyTorch checkpoint: convert once
            sha = convert.file_sha256(entry["path"])
            cell, _ = self._cell("convert", sha, self.plan.model)
            out = os.path.join(cell, "weights")
            if not os.path.exists(out):
                self.log(f"[convert] {name}: {entry['path']}")
                convert.save_converted(out, convert.convert(
                    entry["path"], self.plan.model.arch, self.plan.model.stem))
            return out
        init_dir = self.pretrained(entry["init"]) if entry["init"] else None
        init_sha = convert.load_meta(init_dir)["source_sha256"] \
            if init_dir else None
        cell, key = self._cell("pretrain", name, self.plan.model, self.plan.source,
                               entry["train"], init_sha)
        out = os.path.join(cell, "weights")
        if os.path.exists(out):
            return out
        self.log(f"[pretrain] {name} on {self.plan.source.label} ({entry['train'].mode}) "
                 f"-> {cell}")
        splits = self._load(self.plan.source)
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
                           self.strategy)
        weights_file = os.path.join(cell, "train", "final.weights.h5")
        result.model.save_weights(weights_file)
        meta = {"source": weights_file, "source_sha256": convert.file_sha256(weights_file),
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
        cell, key = self._cell("imp", meta["source_sha256"], self.plan.source, self.plan.imp,
                               entry["imp"])
        paths = [imp.ticket_dir(cell, k) for k in range(1, self.plan.imp.rounds + 1)]
        if all(tickets.is_ticket(p) for p in paths):
            return {k: paths[k - 1] for k in self.plan.ticket_rounds}, key
        self.log(f"[imp] {name}: {self.plan.imp.rounds} tickets ({entry['imp'].mode} "
                 f"training) -> {cell}")
        paths = imp.run(lambda: convert.load_converted(pretrained_dir).model,
                        self._load(self.plan.source), entry["imp"], self.plan.imp, cell,
                        self.strategy, meta={"pretraining": name, "imp_cell": key,
                                             "source_sha256": meta["source_sha256"],
                                             "arch": meta["arch"]})
        return {k: paths[k - 1] for k in self.plan.ticket_rounds}, key

    def transfer_cell(self, name, pretrained_dir, imp_key, ticket, ticket_dir, dataset, regime):
        spec = self._transfer_spec(regime, dataset.name)
        meta = convert.load_meta(pretrained_dir)
        cell, key = self._cell("transfer", meta["source_sha256"],
                               "dense" if ticket == "dense" else [imp_key, ticket],
                               dataset, spec)
        result_path = os.path.join(cell, train.RESULT_FILE)
        if os.path.exists(result_path):  # finished: read, don't rebuild anything
            best = files.read_json(result_path)["best"]
        else:
            self.log(f"[transfer] {name} / {ticket} -> {dataset.label} (rate "
                     f"{dataset.data_rate:g}, {regime}) -> {cell}")
            best = transfer.run(pretrained_dir, ticket_dir, dataset, spec, cell, self.strategy,
                                splits=self._load(dataset)).best
        sparsity = 0.0 if ticket_dir is None else tickets.load(ticket_dir)[1]["sparsity"]
        return {"pretraining": name, "dataset": dataset.label, "data_rate": dataset.data_rate,
                "regime": regime, "ticket": ticket, "sparsity": sparsity,
                "sa": best["sa"]["test_sa"], "ra": best["ra"]["test_ra"],
                "sa_ckpt_test_ra": best["sa"]["test_ra"], "ra_ckpt_test_sa": best["ra"]["test_sa"],
                "val_sa": best["sa"]["val_sa"], "val_ra": best["ra"]["val_ra"],
                "cell": os.path.relpath(cell, self.workdir)}

    # --------------------------------------------------------------------- run
    def run(self):
        rows = []
        for name in self.plan.pretrainings:
            pretrained_dir = self.pretrained(name)
            ticket_dirs, imp_key = self.find_tickets(name, pretrained_dir)
            candidates = [("dense", None)] + [(f"round {k}", d) for k, d in ticket_dirs.items()]
            for dataset in self.plan.datasets:
                for ticket, ticket_dir in candidates:
                    for regime in REGIMES:
                        rows.append(self.transfer_cell(name, pretrained_dir, imp_key, ticket,
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
        row, reason = report.choose_export(rows, summary)
        if row is None:
            return reason
        version = int(self.plan.export.get("version", 1))
        target = os.path.join(self.workdir, "export", str(version))
        if not os.path.exists(target):
            cell = os.path.join(self.workdir, row["cell"])
            provenance = files.read_json(os.path.join(cell, transfer.PROVENANCE_FILE))
            export.export_transfer_cell(cell, os.path.join(self.workdir, "export"), version,
                                        which="ra", tflite=self.plan.export.get("tflite", False),
                                        extra={"selection": reason, "test_sa": row["sa"],
                                               "test_ra": row["ra"]},
                                        splits=self._load(self._dataset_of(provenance)))
        return f"Exported {reason} (adversarial transfer, best-RA checkpoint) to `{target}`."

    def _dataset_of(self, provenance):
        for spec in self.plan.datasets:
            if cfg.to_dict(dataclasses.asdict(spec)) == provenance["dataset_spec"]:
                return spec
        raise KeyError(provenance["dataset"])


def run(config, workdir, strategy=None, log=print):
    """Plans (validates), runs and reports the study. Returns (rows, summary)."""
    return Study(config, workdir, strategy, log).run()
