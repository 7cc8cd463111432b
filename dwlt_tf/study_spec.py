"""The study's spec: a study config (configs/study.py) validated into typed settings.

`study_spec(config)` checks every section before any work starts -- unknown keys, wrong
types, out-of-range values, pre-trained weights that do not exist or do not fit the
model -- and names the key and value of the first problem ("transfer.standard.epochs=0:
must be a positive int"). Everything downstream (the cell graph, the stages, the
assembly, the launcher) reads the `StudySpec`, never the config.
"""
import dataclasses
import os
from typing import Dict, List, Optional, Tuple

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)

from dwlt_tf import audit as audit_lib
from dwlt_tf import checks, convert, data, errors, imp, pruning, report, train, verdicts
from dwlt_tf import export as export_lib
from dwlt_tf import leases as leases_lib
from dwlt_tf import config as cfg

TOP_LEVEL = ("model", "source", "pretrainings", "imp", "tickets", "downstream", "transfer",
             "report", "export", "runtime", "seeds", "pruning", "audit", "leases", "launcher")
PRETRAINING_KEYS = ("path", "train", "imp_mode", "init")
AUDIT_KEYS = ("enabled",) + tuple(f.name for f in dataclasses.fields(audit_lib.AuditSpec))
REGIMES = report.REGIMES
CLUSTERS = ("auto", "slurm", "local")


@dataclasses.dataclass(frozen=True)
class Pretraining:
    """One pre-training: converted (or PyTorch) weights at `path`, or trained here."""
    name: str
    path: Optional[str]                  # converted weights dir or a PyTorch checkpoint
    train: Optional[train.TrainSpec]     # trained here (None: from `path`)
    imp: train.TrainSpec                 # IMP rounds' training on the source task
    init: Optional[str] = None           # trained here starting from this pre-training

    @property
    def has_cell(self):
        """Trained or converted by the study (else: a converted-weights directory)."""
        return self.train is not None or not os.path.isdir(self.path or "")


@dataclasses.dataclass(frozen=True)
class Launcher:
    """How `--launcher=submitit` runs cells: one job per cell (see launcher.py)."""
    cluster: str = "auto"
    partition: str = ""
    gpus_per_cell: int = 1
    cpus_per_cell: int = 8
    mem_gb: int = 32
    timeout_min: int = 24 * 60
    max_parallel: int = 8
    folder: str = ""                      # default <workdir>/jobs
    nodes: int = 1                        # per cell (several: MultiWorkerMirroredStrategy)
    tasks_per_node: int = 1
    retries: int = 3                      # resubmissions of a failed local job
    wait: bool = False                    # SLURM: wait and print progress
    slurm: Tuple[Tuple[str, object], ...] = ()  # extra sbatch parameters

    def __post_init__(self):
        checks.choice("launcher.cluster", self.cluster, CLUSTERS)
        if not isinstance(self.partition, str):
            checks.fail("launcher.partition", self.partition, "must be a string")
        checks.non_negative_int("launcher.gpus_per_cell", self.gpus_per_cell)
        for key in ("cpus_per_cell", "mem_gb", "timeout_min", "max_parallel", "nodes",
                    "tasks_per_node"):
            checks.positive_int(f"launcher.{key}", getattr(self, key))
        checks.non_negative_int("launcher.retries", self.retries)
        checks.boolean("launcher.wait", self.wait)
        checks.optional_str("launcher.folder", self.folder)


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """The validated study."""
    model: cfg.ModelSpec
    source: data.DataSpec
    pretrainings: Dict[str, Pretraining]
    imp: imp.ImpSpec
    ticket_rounds: List[int]
    datasets: List[data.DataSpec]          # one per (dataset, data rate)
    transfer: Dict[str, train.TrainSpec]   # "<regime>" or "<regime>:<dataset>" -> spec
    report: verdicts.Rule                  # how tickets are judged (the `report` section)
    export: dict
    seeds: List[int]                       # every transfer runs once per seed
    methods: List[str]                     # "imp" and the baselines ("omp", "random")
    baseline_rounds: List[int]             # IMP rounds whose sparsity the baselines match
    pruning_seed: int                      # the random baseline's
    audit: Optional[audit_lib.AuditSpec]   # None: no robustness audit
    leases: leases_lib.Settings = leases_lib.Settings()
    launcher: Launcher = Launcher()

    def transfer_spec(self, regime, dataset_name):
        """The training of a transfer: its regime's, or the regime's for that dataset."""
        return self.transfer.get(f"{regime}:{dataset_name}", self.transfer[regime])


def study_spec(config) -> StudySpec:
    """Validates a study config (see configs/study.py) before any work starts."""
    cfg.check_keys(config, TOP_LEVEL, "config")
    model = cfg.model_spec(config.model)
    imp_spec = cfg.imp_spec(config.imp)
    rounds = _ticket_rounds(config.tickets, imp_spec)
    methods, baseline_rounds, pruning_seed = _pruning(config.get("pruning"), rounds)
    return StudySpec(
        model=model, source=cfg.data_spec(config.source, "source"),
        pretrainings=_pretrainings(config.pretrainings, config.imp.train, model),
        imp=imp_spec, ticket_rounds=rounds, datasets=_downstream(config.downstream),
        transfer=_transfer(config.transfer, config.downstream.datasets),
        report=_report(config.report), export=_export(config.export, methods),
        seeds=_seeds(config),
        methods=methods, baseline_rounds=baseline_rounds, pruning_seed=pruning_seed,
        audit=_audit(config.get("audit")), leases=_leases(config.get("leases")),
        launcher=_launcher(config.get("launcher")))


def _pretrainings(section, imp_train, model):
    names = list(cfg.to_dict(section))
    if not names:
        raise cfg.ConfigError("pretrainings: at least one pre-training is needed")
    imp_section = cfg.to_dict(imp_train)
    if "mode" in imp_section:
        raise cfg.ConfigError("imp.train.mode: set the IMP training mode per pre-training "
                              "with pretrainings.<name>.imp_mode")
    out = {}
    for name in names:
        entry = section[name]
        where = f"pretrainings.{name}"
        cfg.check_keys(entry, PRETRAINING_KEYS, where)
        path = checks.optional_str(f"{where}.path", entry.get("path")) or ""
        path = os.path.expandvars(os.path.expanduser(path))
        trained = cfg.to_dict(entry.get("train") or {})
        if not isinstance(trained, dict):
            checks.fail(f"{where}.train", trained, "must be a training section")
        if bool(path) == bool(trained):
            raise cfg.ConfigError(f"{where}: give either `path` (converted or PyTorch weights) "
                                  f"or a `train` section, not {'both' if path else 'neither'}")
        if path:
            _check_pretrained_path(path, model, f"{where}.path={path!r}")
        imp_mode = checks.choice(f"{where}.imp_mode", entry.get("imp_mode", "standard"),
                                 train.MODES)
        init = checks.optional_str(f"{where}.init", entry.get("init")) or ""
        if init and (init not in names or init == name or not trained):
            raise cfg.ConfigError(f"{where}.init={init!r}: must name another pre-training "
                                  f"(one of {names}) and needs a `train` section")
        out[name] = Pretraining(
            name, path or None, cfg.train_spec(trained, f"{where}.train") if trained else None,
            cfg.train_spec(dict(imp_section, mode=imp_mode), "imp.train"), init or None)
    return out


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


def _ticket_rounds(value, imp_spec):
    # "all" (every saved round): from a flag, ml_collections hands a tuple field ("all",).
    if value in ("all", ("all",)):
        value = ()
    if not isinstance(value, (tuple, list)) or not all(checks.is_int(k) for k in value):
        checks.fail("tickets", value, "give round numbers or 'all'")
    rounds = list(value) if value else list(range(1, imp_spec.rounds + 1))
    bad = [k for k in rounds if not 1 <= k <= imp_spec.rounds]
    if bad:
        raise cfg.ConfigError(f"tickets={rounds}: rounds {bad} outside 1..imp.rounds="
                              f"{imp_spec.rounds}")
    return rounds


def _downstream(section):
    cfg.check_keys(section, ("datasets", "data_rates", "dataset"), "downstream")
    names = checks.str_tuple("downstream.datasets", section.datasets, sorted(data.DATASETS),
                             nonempty=True)
    rates = section.data_rates
    if not isinstance(rates, (tuple, list)) or not rates:
        checks.fail("downstream.data_rates", rates, "give one or more data rates in (0, 1]")
    for rate in rates:
        checks.number("downstream.data_rates", rate, 0.0, 1.0, low_open=True)
    for key in ("name", "data_rate"):
        if key in section.dataset:
            raise cfg.ConfigError(f"downstream.dataset.{key}: set by downstream."
                                  f"{'datasets' if key == 'name' else 'data_rates'}")
    out = []
    for name in names:
        for rate in rates:
            values = dict(cfg.to_dict(section.dataset), name=name, data_rate=rate)
            out.append(cfg.data_spec(values, "downstream.dataset"))
    return out


def _transfer(section, dataset_names):
    specs = {}
    for key, values in cfg.to_dict(section).items():
        regime = key.split(":")[0]
        if regime not in REGIMES:
            raise cfg.ConfigError(f"transfer.{key}: unknown regime; use 'standard', "
                                  "'adversarial' or '<regime>:<dataset>'")
        spec = cfg.train_spec(values, f"transfer.{key}")
        if (regime == "standard") != (spec.mode == "standard"):
            raise cfg.ConfigError(f"transfer.{key}.mode={spec.mode!r} does not fit the "
                                  f"{regime} regime")
        if not spec.test:  # the verdicts compare test SA and test RA of every transfer
            raise cfg.ConfigError(f"transfer.{key}.test=False: the study compares every "
                                  "transfer's test SA and RA; keep test=True")
        if spec.eval_attack is None:
            raise cfg.ConfigError(f"transfer.{key}.eval_attack is empty: the study needs "
                                  "RA (e.g. PGD-20: {eps: 8/255, step_size: 2/255, steps: 20})")
        if ":" in key and key.split(":", 1)[1] not in dataset_names:
            raise cfg.ConfigError(f"transfer.{key}: dataset {key.split(':', 1)[1]!r} is not "
                                  f"among downstream.datasets={list(dataset_names)}")
        specs[key] = spec
    for regime in REGIMES:
        if regime not in specs:
            raise cfg.ConfigError(f"transfer.{regime}: missing")
    return specs


def _report(section):
    values = cfg.to_dict(section)
    cfg.check_keys(values, [f.name for f in dataclasses.fields(verdicts.Rule)], "report")
    return verdicts.Rule(**values)


def _export(section, methods):
    cfg.check_keys(section, ("enabled", "version", "tflite", "onnx", "method"), "export")
    values = cfg.to_dict(section)
    checks.positive_int("export.version", values.get("version", 1))
    checks.boolean("export.enabled", values.get("enabled", True))
    checks.boolean("export.tflite", values.get("tflite", False))
    checks.boolean("export.onnx", values.get("onnx", False))
    iterative = [m for m in methods if pruning.METHODS[m].iterative]
    checks.choice("export.method", values.get("method", "imp"), iterative)
    if values.get("onnx") and values.get("enabled", True):
        try:
            export_lib.check_onnx_available()
        except errors.UserError as e:
            raise cfg.ConfigError(f"export.onnx=True: {e}") from None
    return values


def _seeds(config):
    seeds = config.get("seeds") or ()
    if not checks.int_tuple("seeds", seeds, low=0, distinct=True):
        checks.fail("seeds", seeds, "give one or more distinct int seeds")
    return [checks.seed("seeds", s) for s in seeds]


def _pruning(section, rounds):
    values = cfg.to_dict(section or {})
    cfg.check_keys(values, ("methods", "rounds", "seed"), "pruning")
    raw = values.get("methods") or ("imp",)
    if isinstance(raw, (tuple, list)) and len(raw) == 1 and isinstance(raw[0], str):
        raw = tuple(m.strip() for m in raw[0].split(","))  # --config.pruning.methods=imp,omp
    methods = list(checks.str_tuple("pruning.methods", raw, report.METHODS))
    if "imp" not in methods:
        raise cfg.ConfigError(f"pruning.methods={tuple(methods)!r}: choose among "
                              f"{report.METHODS}, 'imp' included (the baselines match the "
                              "sparsities of its tickets)")
    seed = checks.seed("pruning.seed", values.get("seed", 0))
    baseline_rounds = list(checks.int_tuple("pruning.rounds", values.get("rounds") or ())
                           or rounds)
    outside = [k for k in baseline_rounds if k not in rounds]
    if outside:
        raise cfg.ConfigError(f"pruning.rounds={tuple(baseline_rounds)!r}: rounds {outside} "
                              f"are not among the transferred tickets {rounds}")
    return methods, baseline_rounds, seed


def _audit(section):
    """The audit's spec (None when disabled), checked even when disabled."""
    values = cfg.to_dict(section or {})
    cfg.check_keys(values, AUDIT_KEYS, "audit")
    enabled = checks.boolean("audit.enabled", values.pop("enabled", False))
    spec = audit_lib.AuditSpec(**values)  # checked even when disabled: no surprise later
    return spec if enabled else None


def _leases(section):
    values = cfg.to_dict(section or {})
    cfg.check_keys(values, [f.name for f in dataclasses.fields(leases_lib.Settings)], "leases")
    return leases_lib.Settings(**values)


def _launcher(section):
    values = cfg.to_dict(section or {})
    cfg.check_keys(values, [f.name for f in dataclasses.fields(Launcher)], "launcher")
    slurm = values.get("slurm") or {}
    if not isinstance(slurm, dict):
        checks.fail("launcher.slurm", slurm, "must be a dict of extra sbatch parameters")
    values["slurm"] = tuple(sorted(slurm.items()))
    return Launcher(**values)
