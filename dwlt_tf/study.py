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

Scale-out. Every cell has an address (`pretrain:<name>`, `imp:<name>`,
`baseline:<name>:<method>:r<round>`,
`transfer:<name>:<method>:<dense|r<round>>:<dataset label>@<rate>:<regime>:s<seed>`) and is
independent of every other cell once its inputs exist, so a study can be spread over
many processes sharing one workdir (`select`): `shard(i, n)` runs the cells whose
address hashes to share i of n and whose inputs are ready -- N processes on N devices
or hosts never compute a cell twice; `only(address)` runs one cell (what the commands
of `write_plan` do, for SLURM job arrays, Kubernetes Jobs or any scheduler). A process
with a selection writes no report; a final run without one finds every cell finished
and assembles results, report, export and audit.
"""
import dataclasses
import hashlib
import os
import shlex
from typing import Callable, Dict, List, Optional

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)

from dwlt_tf import audit as audit_lib
from dwlt_tf import config as cfg
from dwlt_tf import (attacks, convert, data, errors, export, files, identity, imp, report,
                     tickets, train, transfer)

TOP_LEVEL = ("model", "source", "pretrainings", "imp", "tickets", "downstream", "transfer",
             "report", "export", "runtime", "seeds", "pruning", "audit")
AUDIT_KEYS = ("enabled",) + tuple(f.name for f in dataclasses.fields(audit_lib.AuditSpec))
PRETRAINING_KEYS = ("path", "train", "imp_mode", "init")
REGIMES = report.REGIMES


class Pending(Exception):
    """A cell this process may not run: another process's share, or not this `only` cell."""

    def __init__(self, address):
        super().__init__(address)
        self.address = address


class CellSelectionError(errors.UserError):
    """An unknown cell address, or a cell whose inputs do not exist yet."""


def shard(index, count):
    """A selection running share `index` (0-based) of `count` of the cells."""
    for name, value in (("count", count), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"shard {name} must be an int, got {value!r}")
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= index < count")

    def select(address):
        digest = hashlib.sha256(address.encode()).hexdigest()
        return int(digest[:12], 16) % count == index
    select.description = f"shard {index}/{count}"
    return select


def parse_shard(text):
    """"I/N" (a flag value) -> shard(I, N); bad text is a ValueError naming it."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard={text!r}: write I/N with 0 <= I < N, e.g. 0/4") from None
    try:
        return shard(index, count)
    except ValueError as e:
        raise ValueError(f"--shard={text!r}: {e}") from None


def only(address):
    """A selection running the one cell `address`."""
    def select(candidate):
        return candidate == address
    select.description = f"cell {address}"
    select.address = address
    return select


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
    seeds: List[int]                       # every transfer runs once per seed
    methods: List[str]                     # "imp" and the baselines ("omp", "random")
    baseline_rounds: List[int]             # IMP rounds whose sparsity the baselines match
    pruning_seed: int                      # the random baseline's
    rule: str                              # matching rule: "tolerance" or "std"
    audit: Optional[audit_lib.AuditSpec]   # None: no robustness audit


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
    tickets_value = config.tickets
    # "all" (every saved round): from a flag, ml_collections hands a tuple field ("all",).
    if tickets_value in ("all", ("all",)):
        tickets_value = ()
    if any(not isinstance(k, int) or isinstance(k, bool) for k in tickets_value or ()):
        raise cfg.ConfigError(f"tickets={tickets_value!r}: give round numbers or 'all'")
    rounds = list(tickets_value) if tickets_value else list(range(1, imp_spec.rounds + 1))
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
    cfg.check_keys(config.report, ("tolerance", "rule"), "report")
    tolerance = config.report.tolerance
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise cfg.ConfigError(f"report.tolerance={tolerance!r}: must be a number >= 0 "
                              "(percentage points)")
    rule = config.report.get("rule", "tolerance")
    if rule not in report.RULES:
        raise cfg.ConfigError(f"report.rule={rule!r}: choose one of {report.RULES}")
    cfg.check_keys(config.export, ("enabled", "version", "tflite"), "export")
    export_config = cfg.to_dict(config.export)
    version = export_config.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise cfg.ConfigError(f"export.version={version!r}: must be a positive int")
    seeds = list(config.get("seeds") or ())
    if not seeds or len(set(seeds)) != len(seeds) or any(
            isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise cfg.ConfigError(f"seeds={tuple(seeds)!r}: give one or more distinct int seeds")
    pruning_section = cfg.to_dict(config.get("pruning") or {})
    cfg.check_keys(pruning_section, ("methods", "rounds", "seed"), "pruning")
    methods = list(pruning_section.get("methods") or ("imp",))
    unknown = [m for m in methods if m not in report.METHODS]
    if unknown or "imp" not in methods:
        raise cfg.ConfigError(f"pruning.methods={tuple(methods)!r}: choose among "
                              f"{report.METHODS}, 'imp' included (the baselines match the "
                              "sparsities of its tickets)")
    baseline_rounds = list(pruning_section.get("rounds") or rounds)
    outside = [k for k in baseline_rounds if k not in rounds]
    if outside:
        raise cfg.ConfigError(f"pruning.rounds={tuple(baseline_rounds)!r}: rounds {outside} "
                              f"are not among the transferred tickets {rounds}")
    return Plan(model, source, pretrainings, imp_spec, rounds, datasets, transfer_specs,
                float(tolerance), export_config, seeds, methods, baseline_rounds,
                int(pruning_section.get("seed", 0)), rule, _audit_spec(config.get("audit")))


def _audit_spec(section):
    """The audit's spec (None when disabled), its library checked before any work."""
    values = cfg.to_dict(section or {})
    cfg.check_keys(values, AUDIT_KEYS, "audit")
    if not values.pop("enabled", False):
        return None
    spec = audit_lib.AuditSpec(**values)
    audit_lib.require_art()  # the install hint, now
    return spec


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

    def __init__(self, config, workdir, strategy=None, log=print,
                 select: Optional[Callable[[str], bool]] = None):
        self.plan = plan(config)
        self.config = config
        self.workdir = os.path.abspath(workdir)
        self.strategy = strategy
        self.log = log
        self.select = select        # None: every cell (and the report); see `shard`, `only`
        self.ran: List[str] = []      # addresses of the cells this process computed
        self.finished: List[str] = []  # addresses found finished
        self.pending: List[str] = []   # addresses left for other processes (selections)
        self._splits = {}

    # ------------------------------------------------------------------ helpers
    def _cell(self, kind, cell_identity, address, finished):
        """The directory of the cell with this identity, claimed (identity.claim) when it
        is finished or this process may run it; else `Pending`.

        `finished(path)` says whether the cell's outputs are complete. A cell of another
        process's share is only looked at, never claimed: that process may be claiming it.
        """
        key = identity.key(cell_identity)
        path = os.path.join(self.workdir, "cells", f"{kind}_{key}")
        if finished(path):
            identity.claim(path, cell_identity, what=f"{kind} cell")
            self.finished.append(address)
            return path, key
        if self.select is not None and not self.select(address):
            raise Pending(address)
        identity.claim(path, cell_identity, what=f"{kind} cell")
        self.ran.append(address)
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
        weights_exist = lambda cell: os.path.exists(os.path.join(cell, "weights"))  # noqa: E731
        if entry["path"]:  # a PyTorch checkpoint: convert once
            cell, _ = self._cell("convert", {
                "kind": "convert", "checkpoint_sha256": convert.file_sha256(entry["path"]),
                "model": identity.describe(self.plan.model)}, f"pretrain:{name}", weights_exist)
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
                                                              inputs),
                               f"pretrain:{name}", weights_exist)
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
        rounds = range(1, self.plan.imp.rounds + 1)
        cell, key = self._cell(
            "imp", imp.run_identity(entry["imp"], self.plan.imp, splits.identity, weights),
            f"imp:{name}", lambda c: all(tickets.is_ticket(imp.ticket_dir(c, k)) for k in rounds))
        paths = [imp.ticket_dir(cell, k) for k in rounds]
        if not all(tickets.is_ticket(p) for p in paths):
            self.log(f"[imp] {name}: {self.plan.imp.rounds} tickets ({entry['imp'].mode} "
                     f"training) -> {cell}")
            paths = imp.run(lambda: convert.load_converted(pretrained_dir).model, splits,
                            entry["imp"], self.plan.imp, cell, self.strategy,
                            meta={"pretraining": name, "imp_cell": key,
                                  "source_sha256": meta["source_sha256"], "arch": meta["arch"]},
                            pretrained=weights)
        return {k: paths[k - 1] for k in self.plan.ticket_rounds}

    def baseline(self, name, pretrained_dir, method, imp_round, imp_ticket_dir):
        """The `method` baseline ticket at the sparsity of an IMP ticket (one-shot)."""
        masks, imp_meta = tickets.load(imp_ticket_dir)
        pruned = sum(int(m.size - m.sum()) for m in masks.values())
        weights = convert.weights_identity(convert.load_meta(pretrained_dir))
        cell, key = self._cell("baseline", {
            "kind": "baseline", "method": method, "pretrained": weights, "pruned": pruned,
            "imp": identity.describe(self.plan.imp),
            "seed": self.plan.pruning_seed if method == "random" else None},
            f"baseline:{name}:{method}:r{imp_round}",
            lambda c: tickets.is_ticket(os.path.join(c, "ticket")))
        path = os.path.join(cell, "ticket")
        if not tickets.is_ticket(path):
            self.log(f"[baseline] {name}: {method} at round {imp_meta.get('round')}'s "
                     f"sparsity -> {cell}")
            imp.baseline_ticket(lambda: convert.load_converted(pretrained_dir).model, method,
                                path, pruned=pruned, seed=self.plan.pruning_seed,
                                prunable=self.plan.imp.prunable,
                                meta={"pretraining": name, "baseline_cell": key,
                                      "round": imp_meta.get("round"),
                                      "source_sha256": imp_meta.get("source_sha256")})
        return path

    def transfer_cell(self, name, pretrained_dir, method, ticket, ticket_dir, dataset, regime,
                      seed):
        spec = dataclasses.replace(self._transfer_spec(regime, dataset.name), seed=seed)
        splits = self._load(dataset)
        cell, _ = self._cell(
            "transfer", transfer.run_identity(pretrained_dir, ticket_dir, splits.identity, spec),
            transfer_address(name, method, ticket, dataset, regime, seed),
            lambda c: os.path.exists(os.path.join(c, train.RESULT_FILE)))
        result_path = os.path.join(cell, train.RESULT_FILE)
        if os.path.exists(result_path):  # finished: read, don't rebuild anything
            result = train.TrainResult.from_json(files.read_json(result_path))
        else:
            self.log(f"[transfer] {name} / {ticket} ({method}, seed {seed}) -> "
                     f"{dataset.label} (rate {dataset.data_rate:g}, {regime}) -> {cell}")
            result = transfer.run(pretrained_dir, ticket_dir, dataset, spec, cell,
                                  self.strategy, splits=splits)
        sparsity = 0.0 if ticket_dir is None else tickets.load(ticket_dir)[1]["sparsity"]
        return {"pretraining": name, "dataset": dataset.label, "data_rate": dataset.data_rate,
                "regime": regime, "method": method, "ticket": ticket, "sparsity": sparsity,
                "seed": seed, "sa": result.best_sa.test_sa, "ra": result.best_ra.test_ra,
                "sa_ckpt_test_ra": result.best_sa.test_ra,
                "ra_ckpt_test_sa": result.best_ra.test_sa,
                "val_sa": result.best_sa.val_sa, "val_ra": result.best_ra.val_ra,
                "ra_attack": report.attack_label(result.eval_attack),
                "cell": os.path.relpath(cell, self.workdir)}

    def audit_cell(self, row):
        """The robustness audit of a transfer row's best-RA checkpoint (its own cell)."""
        run = transfer.open_run(os.path.join(self.workdir, row["cell"]))
        cell, _ = self._cell("audit", {"kind": "audit", "run": run.key, "checkpoint": "best_ra",
                                       "split": "test",
                                       "audit": identity.describe(self.plan.audit)},
                             f"audit:{row['cell']}",
                             lambda c: os.path.exists(os.path.join(c, "audit.json")))
        path = os.path.join(cell, "audit.json")
        if not os.path.exists(path):
            self.log(f"[audit] {row['pretraining']} / {row['ticket']} ({row['regime']}, seed "
                     f"{row['seed']}) -> {cell}")
            attack = run.result.eval_attack
            pgd = attacks.Attack(attack["eps"], attack["step_size"], attack["steps"],
                                 attack["random_start"])
            splits = self._load(run.dataset)
            model, _, _ = transfer.load_best(run, "ra", splits)
            result = audit_lib.audit_split(model, splits, "test", self.plan.audit, pgd,
                                           noise_seed=run.identity["train"].get("seed", 1))
            files.write_json(path, result.to_json())
        return files.read_json(path)

    # --------------------------------------------------------------------- run
    def run(self):
        """Runs every selected cell whose inputs exist; without a selection, then also
        writes the results, report, plots, export and audit. Returns (rows, summary);
        summary is None when a selection ran (`pending` then names what is left)."""
        self.check_data()
        rows, self.pending = [], []
        for name in self.plan.pretrainings:
            try:
                pretrained_dir = self.pretrained(name)
            except Pending as waiting:
                self.pending.append(waiting.address)
                continue
            candidates = [("dense", "dense", None)]
            try:
                ticket_dirs = self.find_tickets(name, pretrained_dir)
            except Pending as waiting:
                self.pending.append(waiting.address)
                ticket_dirs = {}
            candidates += [("imp", f"round {k}", d) for k, d in ticket_dirs.items()]
            for method in self.plan.methods:
                if method == "imp" or not ticket_dirs:
                    continue
                for k in self.plan.baseline_rounds:
                    try:
                        candidates.append((method, f"round {k}", self.baseline(
                            name, pretrained_dir, method, k, ticket_dirs[k])))
                    except Pending as waiting:
                        self.pending.append(waiting.address)
            for dataset in self.plan.datasets:
                for method, ticket, ticket_dir in candidates:
                    for regime in REGIMES:
                        for seed in self.plan.seeds:
                            try:
                                rows.append(self.transfer_cell(
                                    name, pretrained_dir, method, ticket, ticket_dir, dataset,
                                    regime, seed))
                            except Pending as waiting:
                                self.pending.append(waiting.address)
        if self.select is not None:
            self._check_selected_cell()
            return rows, None
        summary = report.analyze(rows, self.plan.tolerance, self.plan.rule)
        exported = None
        note = None
        if self.plan.export.get("enabled", True):
            exported, note = self._export(rows, summary)
        audits = self._audit(rows, exported) if self.plan.audit else []
        report.write_tables(rows, self.workdir)
        report.plot(rows, summary, self.workdir)
        text = report.markdown(rows, summary, self.plan.tolerance, note, self.plan.rule,
                               self.plan.seeds, audits)
        files.update_text(os.path.join(self.workdir, "report.md"), text)
        files.update_json(os.path.join(self.workdir, "summary.json"),
                         {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in summary.items()})
        return rows, summary

    def _check_selected_cell(self):
        """With `only(address)`: the cell must be known and must have run or be finished."""
        address = getattr(self.select, "address", None)
        if address is None or address in self.ran or address in self.finished:
            return
        needs = {cell["cell"]: cell["after"] for cell in self.cells()}
        if address not in needs:
            raise CellSelectionError(f"--cell={address!r} is not a cell of this study; its "
                                     f"cells are: {', '.join(needs)}")
        missing = [a for a in needs[address] if a not in self.finished]
        raise CellSelectionError(f"cell {address} cannot run yet: it needs "
                                 f"{', '.join(missing) or 'its inputs'} first")

    def cells(self):
        """Every cell of the study in dependency order: [{cell, after}] (addresses).

        Read from the plan alone (nothing is computed or loaded), for `write_plan`.
        """
        out = []
        for name, entry in self.plan.pretrainings.items():
            has_cell = bool(entry["train"]) or not os.path.isdir(entry["path"] or "")
            upstream = [f"pretrain:{name}"] if has_cell else []
            if has_cell:
                init = entry["init"]
                out.append({"cell": f"pretrain:{name}",
                            "after": [f"pretrain:{init}"] if init else []})
            out.append({"cell": f"imp:{name}", "after": upstream})
            candidates = [("dense", "dense", upstream)] + [
                ("imp", f"round {k}", [f"imp:{name}"]) for k in self.plan.ticket_rounds]
            for method in self.plan.methods:
                if method == "imp":
                    continue
                for k in self.plan.baseline_rounds:
                    address = f"baseline:{name}:{method}:r{k}"
                    out.append({"cell": address, "after": [f"imp:{name}"]})
                    candidates.append((method, f"round {k}", [address]))
            for dataset in self.plan.datasets:
                for method, ticket, after in candidates:
                    for regime in REGIMES:
                        for seed in self.plan.seeds:
                            out.append({"cell": transfer_address(name, method, ticket, dataset,
                                                                 regime, seed),
                                        "after": list(after)})
        return out

    def _audit(self, rows, exported):
        """Audits the dense models (both regimes, first seed) and the exported ticket; adds
        the audit columns to their rows and the result to the export's ticket.json."""
        first = self.plan.seeds[0]
        chosen = [r for r in rows if r["method"] == "dense" and r["seed"] == first]
        if exported and exported[0] not in chosen:
            chosen.append(exported[0])
        audits = []
        for row in chosen:
            result = self.audit_cell(row)
            for attack, value in result["ra"].items():
                row[f"audit_{attack}_ra"] = value
            row["audit_worst_case_ra"] = result["worst_case_ra"]
            row["audit_gradient_masking_suspected"] = result["gradient_masking_suspected"]
            audits.append((row, result))
        if exported:
            row, target = exported
            export.add_audit(target, next(result for r, result in audits if r is row))
        return audits

    def _export(self, rows, summary):
        """Exports the chosen ticket. Returns ((row, export path) or None, the report's
        sentence on what is where)."""
        row, reason = report.choose_export(rows, summary)
        if row is None:
            return None, reason
        run = transfer.open_run(os.path.join(self.workdir, row["cell"]))
        export_dir = os.path.join(self.workdir, "export")
        wanted = int(self.plan.export.get("version", 1))
        # The same sentence whether exported now or by an earlier run, so that re-running a
        # finished study rewrites nothing.
        version = export.find_version(export_dir, run.key, "best_ra")
        if version is None:
            version = wanted if not os.path.exists(os.path.join(export_dir, str(wanted))) \
                else export.next_version(export_dir)
            export.export_run(
                run, export_dir, version, which="ra",
                tflite=self.plan.export.get("tflite", False),
                extra={"selection": reason, "seed": row["seed"]},
                splits=self._load(run.dataset), log=self.log)
        info = export.exported_info(export_dir, version)
        prefix = ""
        if version != wanted:
            existing = export.exported_info(export_dir, wanted)
            what = (f"an earlier selection ({existing.get('selection', 'unknown')})"
                    if existing else "something that is not a complete export")
            prefix = f"`export/{wanted}` already holds {what} and was left as it is; "
        return (row, os.path.join(export_dir, str(version))), (
            f"{prefix}Exported {reason} (adversarial transfer, seed {row['seed']}, best-RA "
            f"checkpoint: test SA {_pct(info['test_sa'])}, RA {_pct(info['test_ra'])}) to "
            f"`export/{version}`.")


def _pct(value):
    return "–" if value is None else f"{value:.2f}%"


def transfer_address(name, method, ticket, dataset, regime, seed):
    ticket = "dense" if ticket == "dense" else "r" + ticket.split()[-1]
    return (f"transfer:{name}:{method}:{ticket}:{dataset.label}@{dataset.data_rate:g}:"
            f"{regime}:s{seed}")


def write_plan(config, workdir, command, path):
    """Writes the study's cells as ready-to-run commands: `path` (JSON) and `path`.sh.

    `command` is the study command without selection flags (a list of arguments); each
    cell's command appends `--cell=<address>`, and the last command -- the same study
    without a selection -- assembles results, report, export and audit. The JSON lists
    each cell with the cells it needs (`after`), for schedulers with dependencies (SLURM
    `--dependency`, Kubernetes Jobs, Argo); the shell form runs them in order.
    """
    cells = Study(config, workdir, log=lambda *_: None).cells()
    for cell in cells:
        cell["command"] = shlex.join(list(command) + [f"--cell={cell['cell']}"])
    assemble = shlex.join(list(command))
    files.write_json(path, {"workdir": os.path.abspath(workdir), "cells": cells,
                            "assemble": {"command": assemble,
                                         "after": [c["cell"] for c in cells]}})
    lines = ["#!/bin/sh", "# Generated by trainers/study.py --plan: one study cell per line, "
             "in dependency order; the last line assembles the report.", "set -e"]
    lines += [c["command"] for c in cells] + [assemble]
    files.write_text(path + ".sh", "\n".join(lines) + "\n")
    return cells


def run(config, workdir, strategy=None, log=print, select=None):
    """Plans (validates), runs and reports the study. Returns (rows, summary); with a
    `select`ion (see `shard`, `only`) runs only those cells and returns (rows, None)."""
    return Study(config, workdir, strategy, log, select).run()
