"""One stage per cell kind: what a cell needs, its identity, when it is finished, its work.

Each stage reads its inputs from the outputs of the cells it needs (`Context.output`):
weights directories, ticket directories, transfer results. Input *content* enters a
cell's identity through the records those outputs carry -- converted weights' sha256
(`converted.json`), a ticket's masks sha256 (`ticket.json`) -- so resolving a cell costs
a few small reads, not re-hashing masks or reading datasets. The one ticket a transfer
trains on is verified: `transfer.run` claims its workdir with the identity it computes
from the masks themselves.

Stages are driven by `study.py` under the cell's lease; they print exactly one line,
`[<kind>] ...`, when they compute.
"""
import dataclasses
import os
from typing import Callable, Dict, Optional

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf

from dwlt_tf import audit as audit_lib
from dwlt_tf import (cells, convert, data, errors, export, files, identity, imp, pruning,
                     records, report, runs, runtime, tickets, train, transfer)
from dwlt_tf.study_spec import StudySpec


class NotReady(Exception):
    """A cell's inputs do not exist yet: `missing` names the cells that must finish."""

    def __init__(self, missing):
        super().__init__(", ".join(missing))
        self.missing = list(missing)


@dataclasses.dataclass(frozen=True)
class TransferRow:
    """One transfer's result, as the report reads it (`report.py`)."""
    pretraining: str
    dataset: str
    data_rate: float
    regime: str
    method: str                  # dense | a `pruning.METHODS` name
    ticket: str                  # "dense", "round k" or an N:M pattern ("2:4")
    sparsity: float
    seed: int
    sa: float                    # test SA of the best-SA checkpoint
    ra: float                    # test RA of the best-RA checkpoint
    sa_ckpt_test_ra: Optional[float]
    ra_ckpt_test_sa: Optional[float]
    val_sa: float
    val_ra: Optional[float]
    ra_attack: str
    cell: str                    # the run's directory, relative to the workdir
    address: str = ""
    audit: Optional[dict] = None  # the robustness audit of this run, when audited
    # Per-example test records (`records.py`), relative to the workdir: the SA verdicts
    # read `best_sa/clean`, the RA verdicts `best_ra/robust`.
    records: str = ""

    def record(self):
        """A flat dict: results.csv / results.json (audit columns flattened)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("audit", "address")}
        if self.audit:
            for attack, value in self.audit["ra"].items():
                out[f"audit_{attack}_ra"] = value
            out["audit_autoattack_ra"] = self.audit.get("autoattack_ra")
            out["audit_worst_case_ra"] = self.audit["worst_case_ra"]
            out["audit_version"] = self.audit.get("version")
            out["audit_gradient_masking_suspected"] = self.audit["gradient_masking_suspected"]
        return out


@dataclasses.dataclass(frozen=True)
class Weights:
    """A pre-training's weights (theta0): a converted-weights directory and its identity."""
    path: str
    identity: dict


@dataclasses.dataclass(frozen=True)
class Ticket:
    path: str
    fingerprint: str             # masks sha256, as ticket.json records it
    pruned: int                  # number of pruned weights
    sparsity: float


class Context:
    """What stages share within one process: the spec, the workdir, loaded data, the
    outputs of cells resolved so far."""

    def __init__(self, spec: StudySpec, graph: cells.Graph, workdir, strategy=None,
                 log: Callable = print):
        self.spec, self.graph, self.workdir = spec, graph, os.path.abspath(workdir)
        self.strategy, self.log = strategy, log
        # With several workers per cell (a multi-node job), all train; the chief writes.
        self.chief = runtime.is_chief(strategy or tf.distribute.get_strategy())
        self._splits: Dict[data.DataSpec, data.Splits] = {}
        self._data_identity: Dict[data.DataSpec, dict] = {}
        self.resolved: Dict[str, "Resolved"] = {}

    def splits(self, spec: data.DataSpec) -> data.Splits:
        """The loaded dataset; bad data is named with its config section."""
        if spec not in self._splits:
            self._splits[spec] = self._named(spec, lambda: data.load(spec))
        return self._splits[spec]

    def data_identity(self, spec: data.DataSpec) -> dict:
        """A dataset's identity from its fingerprint alone (no loading)."""
        if spec in self._splits:
            return self._splits[spec].identity
        if spec not in self._data_identity:
            def content():
                data.check_classes(spec)  # a bad class index fails before any cell starts
                return data.fingerprint(spec)
            self._data_identity[spec] = data.dataset_identity(spec, self._named(spec, content))
        return self._data_identity[spec]

    def _named(self, spec, load):
        where = "source" if spec == self.spec.source else "downstream.dataset"
        try:
            return load()
        except (data.DatasetError, errors.ConfigError) as e:
            text = str(e)
            text = where + text[len("dataset"):] if text.startswith("dataset.") else \
                f"{where}: {text}"
            raise type(e)(text) from None

    def read_records(self, relative) -> records.ExampleRecords:
        """Per-example records by their path relative to the workdir (`TransferRow.records`,
        an audit's "records")."""
        return records.read_file(os.path.join(self.workdir, relative))

    def cell_dir(self, kind, cell_identity):
        return os.path.join(self.workdir, "cells", f"{kind}_{identity.key(cell_identity)}")

    def output(self, address):
        """The output of a finished cell (or of a pre-training without a cell); raises
        NotReady naming the unfinished cells it depends on."""
        resolved = resolve(self, address)
        if not resolved.finished:
            raise NotReady([address])
        return resolved.output


@dataclasses.dataclass
class Resolved:
    """A cell with its inputs in place: identity, directory, whether it is finished."""
    cell: Optional[cells.Cell]
    identity: Optional[dict]
    path: Optional[str]
    finished: bool
    inputs: dict
    output: object = None


def resolve(ctx: Context, address) -> Resolved:
    """Resolves `address` (cached while finished); NotReady when its inputs are missing."""
    cached = ctx.resolved.get(address)
    if cached is not None and cached.finished:
        return cached
    if address.startswith("pretrain:") and address not in ctx.graph:
        entry = ctx.spec.pretrainings[address.split(":", 1)[1]]  # converted weights
        out = Resolved(None, None, entry.path, True, {},
                       Weights(entry.path, convert.weights_identity(convert.load_meta(
                           entry.path))))
    else:
        cell = ctx.graph[address]
        stage = STAGES[cell.kind]
        inputs = stage.inputs(ctx, cell)
        cell_identity = stage.identity(ctx, cell, inputs)
        path = ctx.cell_dir(directory_kind(ctx, cell), cell_identity)
        finished = stage.finished(ctx, cell, path)
        out = Resolved(cell, cell_identity, path, finished, inputs)
        if finished:
            out.output = stage.output(ctx, cell, inputs, path)
    ctx.resolved[address] = out
    return out


def _weights(ctx, name):
    return ctx.output(cells.pretrain_address(name))


def _gather(ctx, addresses):
    """{address: output} of finished cells; NotReady listing every unfinished one."""
    out, missing = {}, []
    for address in addresses:
        try:
            out[address] = ctx.output(address)
        except NotReady as waiting:
            missing += waiting.missing
    if missing:
        raise NotReady(missing)
    return out


# ---------------------------------------------------------------------- stages

class PretrainStage:
    """Converts a PyTorch checkpoint, or trains a pre-training on the source task."""
    kind = "pretrain"

    def inputs(self, ctx, cell):
        entry = ctx.spec.pretrainings[cell.pretraining]
        if entry.train is None:
            return {"checkpoint_sha256": convert.file_sha256(entry.path)}
        init = _weights(ctx, entry.init) if entry.init else None
        return {"init": init, "source": ctx.data_identity(ctx.spec.source)}

    def identity(self, ctx, cell, inputs, full=False):
        model = identity.describe(ctx.spec.model, full)
        entry = ctx.spec.pretrainings[cell.pretraining]
        if entry.train is None:
            return {"kind": "convert", "checkpoint_sha256": inputs["checkpoint_sha256"],
                    "model": model}
        return train.run_identity(entry.train, inputs["source"],
                                  self._run_inputs(inputs, model), ctx.strategy, full)

    @staticmethod
    def _run_inputs(inputs, model):
        return {"kind": "pretrain", "model": model,
                "init": inputs["init"].identity if inputs["init"] else None}

    def cell_kind(self, ctx, cell):
        return "pretrain" if ctx.spec.pretrainings[cell.pretraining].train else "convert"

    def finished(self, ctx, cell, path):
        return os.path.exists(os.path.join(path, "weights"))

    def output(self, ctx, cell, inputs, path):
        out = os.path.join(path, "weights")
        return Weights(out, convert.weights_identity(convert.load_meta(out)))

    def compute(self, ctx, cell, inputs, path):
        entry, model = ctx.spec.pretrainings[cell.pretraining], ctx.spec.model
        out = os.path.join(path, "weights")
        if entry.train is None:
            ctx.log(f"[convert] {cell.pretraining}: {entry.path}")
            convert.save_converted(out, convert.convert(entry.path, model.arch, model.stem))
            return
        splits = ctx.splits(ctx.spec.source)
        ctx.log(f"[pretrain] {cell.pretraining} on {ctx.spec.source.label} "
                f"({entry.train.mode}) -> {path}")
        mean, std = splits.spec.mean_std
        init = inputs["init"]
        init_weights = convert.load_converted(init.path).model.get_weights() if init else None

        def build():
            import tf_keras  # pylint: disable=import-outside-toplevel
            tf_keras.utils.set_random_seed(entry.train.seed)
            net = model.build(splits.num_classes, mean, std)
            if init_weights is not None:  # continue from another pre-training
                net.set_weights(init_weights)
            return net
        run_inputs = self._run_inputs(inputs, identity.describe(model))
        result = train.fit(build, splits, entry.train, os.path.join(path, "train"),
                           ctx.strategy, inputs=run_inputs)
        if not ctx.chief:
            return
        meta = {"source": os.path.join(path, "train"),
                "source_sha256": convert.weights_sha256(result.model),
                "format": "dwlt_tf", "pretraining": cell.pretraining, "arch": model.arch,
                "stem": model.stem, "base_width": model.base_width,
                "num_classes": splits.num_classes, "mean": list(mean), "std": list(std),
                "normalization": "dataset", "masked": False,
                "cell": os.path.basename(path).split("_", 1)[1],
                "dwlt_tf_version": dwlt_tf.__version__}
        convert.save_converted(out, convert.Converted(result.model, {}, meta))


class ImpStage:
    """IMP with rewinding: tickets 1..imp.rounds of a pre-training (or, for an N:M
    method such as `imp_2by4`, its rounds down to the pattern)."""
    kind = "imp"

    @staticmethod
    def imp_spec(ctx, cell) -> imp.ImpSpec:
        nm = pruning.METHODS[cell.method].nm
        if nm is None:
            return ctx.spec.imp
        # One weight per group per round: the share pruned globally (`fraction`) plays no
        # part, so it stays at its default and out of the identity.
        return dataclasses.replace(ctx.spec.imp, pattern=pruning.pattern_name(nm),
                                   rounds=nm[1] - nm[0], fraction=imp.ImpSpec.fraction)

    def inputs(self, ctx, cell):
        return {"weights": _weights(ctx, cell.pretraining),
                "source": ctx.data_identity(ctx.spec.source)}

    def identity(self, ctx, cell, inputs, full=False):
        entry = ctx.spec.pretrainings[cell.pretraining]
        return imp.run_identity(entry.imp, self.imp_spec(ctx, cell), inputs["source"],
                                inputs["weights"].identity, ctx.strategy, full)

    def finished(self, ctx, cell, path):
        return all(tickets.is_ticket(imp.ticket_dir(path, k))
                   for k in range(1, self.imp_spec(ctx, cell).rounds + 1))

    def output(self, ctx, cell, inputs, path):
        """{round: Ticket}: the transferred rounds (N:M: the last round only)."""
        spec = self.imp_spec(ctx, cell)
        rounds = ctx.spec.ticket_rounds if spec.nm is None else [spec.rounds]
        return {k: _ticket(imp.ticket_dir(path, k)) for k in rounds}

    def compute(self, ctx, cell, inputs, path):
        entry, weights = ctx.spec.pretrainings[cell.pretraining], inputs["weights"]
        spec = self.imp_spec(ctx, cell)
        meta = convert.load_meta(weights.path)
        what = (f"{spec.rounds} tickets" if spec.nm is None else
                f"{spec.rounds} rounds to {spec.pattern}")
        ctx.log(f"[imp] {cell.pretraining}: {what} ({entry.imp.mode} training) -> {path}")
        imp.run(lambda: convert.load_converted(weights.path).model,
                ctx.splits(ctx.spec.source), entry.imp, spec, path, ctx.strategy,
                meta={"pretraining": cell.pretraining, "method": cell.method,
                      "imp_cell": os.path.basename(path).split("_", 1)[1],
                      "source_sha256": meta["source_sha256"], "arch": meta["arch"]},
                pretrained=weights.identity)


def _ticket(path) -> Ticket:
    """A ticket by its record (no masks loaded)."""
    meta = files.read_json(os.path.join(path, tickets.META_FILE))
    return Ticket(path, meta["masks_sha256"], int(round(meta["sparsity"] * meta["num_weights"])),
                  meta["sparsity"])


class BaselineStage:
    """A one-shot ticket: OMP or random with exactly an IMP ticket's number of zeros, or
    an N:M one (`omp_2by4`) at its pattern."""
    kind = "baseline"

    def inputs(self, ctx, cell):
        if pruning.METHODS[cell.method].nm is not None:
            return {"imp_ticket": None, "weights": _weights(ctx, cell.pretraining)}
        found = _gather(ctx, [cells.imp_address(cell.pretraining),
                              cells.pretrain_address(cell.pretraining)])
        return {"imp_ticket": found[cells.imp_address(cell.pretraining)][cell.round],
                "weights": found[cells.pretrain_address(cell.pretraining)]}

    def seed(self, ctx, cell):
        # Random masks are drawn per transfer seed (seed=None: OMP, deterministic).
        return None if cell.seed is None else [ctx.spec.pruning_seed, cell.seed]

    def identity(self, ctx, cell, inputs, full=False):
        if inputs["imp_ticket"] is None:  # N:M: the pattern, not a count, says how far
            return {"kind": "baseline", "method": cell.method,
                    "pretrained": inputs["weights"].identity,
                    "pattern": pruning.METHODS[cell.method].pattern,
                    "prunable": list(ctx.spec.imp.prunable)}
        return {"kind": "baseline", "method": cell.method,
                "pretrained": inputs["weights"].identity,
                "pruned": inputs["imp_ticket"].pruned,
                "imp": identity.describe(ctx.spec.imp, full), "seed": self.seed(ctx, cell)}

    def finished(self, ctx, cell, path):
        return tickets.is_ticket(os.path.join(path, "ticket"))

    def output(self, ctx, cell, inputs, path):
        return _ticket(os.path.join(path, "ticket"))

    def compute(self, ctx, cell, inputs, path):
        ticket, weights = inputs["imp_ticket"], inputs["weights"]
        model_fn = lambda: convert.load_converted(weights.path).model  # noqa: E731
        meta = {"pretraining": cell.pretraining,
                "baseline_cell": os.path.basename(path).split("_", 1)[1]}
        if ticket is None:
            ctx.log(f"[baseline] {cell.pretraining}: {cell.method} -> {path}")
            imp.baseline_ticket(model_fn, cell.method, os.path.join(path, "ticket"),
                                prunable=ctx.spec.imp.prunable, meta={
                                    **meta, "source_sha256": convert.load_meta(
                                        weights.path).get("source_sha256")})
            return
        ctx.log(f"[baseline] {cell.pretraining}: {cell.method} at round {cell.round}'s "
                f"sparsity" + (f" (seed {cell.seed})" if cell.seed is not None else "")
                + f" -> {path}")
        imp_meta = files.read_json(os.path.join(ticket.path, tickets.META_FILE))
        imp.baseline_ticket(model_fn, cell.method, os.path.join(path, "ticket"),
                            pruned=ticket.pruned, seed=self.seed(ctx, cell) or 0,
                            prunable=ctx.spec.imp.prunable,
                            meta={**meta, "round": cell.round,
                                  "source_sha256": imp_meta.get("source_sha256")})


class TransferStage:
    """One transfer of a ticket (or the dense model) to a downstream task."""
    kind = "transfer"

    def _ticket_address(self, cell):
        if cell.method == "dense":
            return None
        if pruning.METHODS[cell.method].iterative:
            return cells.imp_address(cell.pretraining, cell.method)
        return cells.baseline_address(cell.pretraining, cell.method, cell.round,
                                      cell.seed if cell.method == "random" else None)

    def inputs(self, ctx, cell):
        needed = [cells.pretrain_address(cell.pretraining)]
        ticket_address = self._ticket_address(cell)
        if ticket_address:
            needed.append(ticket_address)
        found = _gather(ctx, needed)
        ticket = found[ticket_address] if ticket_address else None
        if cell.method != "dense" and pruning.METHODS[cell.method].iterative:
            ticket = ticket[cell.round] if cell.round is not None else ticket[max(ticket)]
        return {"weights": found[cells.pretrain_address(cell.pretraining)], "ticket": ticket,
                "dataset": ctx.data_identity(cell.dataset)}

    def spec(self, ctx, cell):
        return dataclasses.replace(ctx.spec.transfer_spec(cell.regime, cell.dataset.name),
                                   seed=cell.seed)

    def identity(self, ctx, cell, inputs, full=False):
        ticket = inputs["ticket"]
        run_inputs = {"kind": "transfer", "pretrained": inputs["weights"].identity,
                      "ticket": ticket.fingerprint if ticket else None}
        return train.run_identity(self.spec(ctx, cell), inputs["dataset"], run_inputs,
                                  ctx.strategy, full)

    def finished(self, ctx, cell, path):
        # A run finished by an older dwlt_tf lacks its records: computing the cell again
        # only evaluates its best checkpoints (`train.fit` backfills them).
        return os.path.exists(os.path.join(path, train.RESULT_FILE)) and records.exists(path)

    def output(self, ctx, cell, inputs, path) -> TransferRow:
        result = train.TrainResult.from_json(files.read_json(os.path.join(path,
                                                                          train.RESULT_FILE)))
        ticket = inputs["ticket"]
        return TransferRow(
            pretraining=cell.pretraining, dataset=cell.dataset.label,
            data_rate=cell.dataset.data_rate, regime=cell.regime, method=cell.method,
            ticket=cell.ticket, sparsity=ticket.sparsity if ticket else 0.0, seed=cell.seed,
            sa=result.best_sa.test_sa, ra=result.best_ra.test_ra,
            sa_ckpt_test_ra=result.best_sa.test_ra, ra_ckpt_test_sa=result.best_ra.test_sa,
            val_sa=result.best_sa.val_sa, val_ra=result.best_ra.val_ra,
            ra_attack=report.attack_label(result.eval_attack),
            cell=os.path.relpath(path, ctx.workdir), address=cell.address,
            records=os.path.relpath(records.path_in(path), ctx.workdir))

    def compute(self, ctx, cell, inputs, path):
        ticket = inputs["ticket"]
        ctx.log(f"[transfer] {cell.pretraining} / {cell.ticket} ({cell.method}, seed "
                f"{cell.seed}) -> {cell.dataset.label} (rate {cell.dataset.data_rate:g}, "
                f"{cell.regime}) -> {path}")
        transfer.run(inputs["weights"].path, ticket.path if ticket else None, cell.dataset,
                     self.spec(ctx, cell), path, ctx.strategy,
                     splits=ctx.splits(cell.dataset))


class ExportStage:
    """The chosen ticket (sparsest double-win, see `report.choose_export`) as a SavedModel
    in `<workdir>/export/<version>`; the cell's `export.json` says which version."""
    kind = "export"
    RECORD = "export.json"

    def inputs(self, ctx, cell):
        rows = list(_gather(ctx, cell.needs).values())
        summary = report.analyze(rows, ctx.spec.report, ctx.read_records)
        row, reason = report.choose_export(rows, summary, ctx.spec.export.get("method", "imp"))
        return {"row": row, "reason": reason}

    def identity(self, ctx, cell, inputs, full=False):
        del full  # nothing at a default to spell out
        row = inputs["row"]
        run_key = os.path.basename(row.cell).split("_", 1)[1] if row else None
        out = {"kind": "export", "run": run_key, "checkpoint": "best_ra",
               "version": ctx.spec.export.get("version", 1),
               "tflite": ctx.spec.export.get("tflite", False)}
        if ctx.spec.export.get("onnx", False):  # only when set: older keys stay valid
            out["onnx"] = True
        return out

    def finished(self, ctx, cell, path):
        record = os.path.join(path, self.RECORD)
        if not os.path.exists(record):
            return False
        version, run_key = (files.read_json(record).get(k) for k in ("version", "run"))
        if version is None:
            return True  # nothing to export
        # Still there and still this selection (not replaced by hand since)?
        source = (export.exported_info(os.path.join(ctx.workdir, "export"), version) or
                  {}).get("source_run", {})
        return source.get("key") == run_key

    def output(self, ctx, cell, inputs, path):
        return files.read_json(os.path.join(path, self.RECORD))

    def compute(self, ctx, cell, inputs, path):
        row, reason = inputs["row"], inputs["reason"]
        record = {"version": None, "note": reason, "address": row.address if row else None}
        if row is not None:
            record = _export_row(ctx, row, reason)
        files.write_json(os.path.join(path, self.RECORD), record)


def _export_row(ctx, row, reason):
    run = runs.open_run(os.path.join(ctx.workdir, row.cell))
    export_dir = os.path.join(ctx.workdir, "export")
    wanted = int(ctx.spec.export.get("version", 1))
    version = export.find_version(export_dir, run.key, "best_ra")
    if version is None:
        version = wanted if not os.path.lexists(os.path.join(export_dir, str(wanted))) \
            else export.next_version(export_dir)
        ctx.log(f"[export] {row.pretraining} / {row.ticket} ({row.regime}, seed {row.seed}) "
                f"-> export/{version}")
        export.export_run(run, export_dir, version, which="ra",
                          tflite=ctx.spec.export.get("tflite", False),
                          extra={"selection": reason, "seed": row.seed},
                          splits=ctx.splits(run.dataset), log=ctx.log,
                          onnx=ctx.spec.export.get("onnx", False))
    info = export.exported_info(export_dir, version)
    prefix = ""
    if version != wanted:
        existing = export.exported_info(export_dir, wanted)
        what = (f"an earlier selection ({existing.get('selection', 'unknown')})"
                if existing else "something that is not a complete export")
        prefix = f"`export/{wanted}` already holds {what} and was left as it is; "
    note = (f"{prefix}Exported {reason} (adversarial transfer, seed {row.seed}, best-RA "
            f"checkpoint: test SA {_pct(info['test_sa'])}, RA {_pct(info['test_ra'])}) to "
            f"`export/{version}`.")
    return {"version": version, "note": note, "address": row.address, "run": run.key}


def _pct(value):
    return "–" if value is None else f"{value:.2f}%"


class AuditStage:
    """The robustness audit of a transfer's best-RA checkpoint (a dense model, or the
    exported ticket's run -- then also recorded in the export's ticket.json)."""
    kind = "audit"
    RECORD = "audit.json"

    def inputs(self, ctx, cell):
        if cell.target == cells.EXPORT:
            exported = ctx.output(cells.EXPORT)
            if not exported.get("address"):
                return {"row": None, "export": None}
            row = ctx.output(exported["address"])
            return {"row": row,
                    "export": os.path.join(ctx.workdir, "export", str(exported["version"]))}
        return {"row": ctx.output(cell.target), "export": None}

    def identity(self, ctx, cell, inputs, full=False):
        row = inputs["row"]
        run_key = os.path.basename(row.cell).split("_", 1)[1] if row else None
        out = {"kind": "audit", "run": run_key, "checkpoint": "best_ra", "split": "test",
               "audit": identity.describe(ctx.spec.audit, full)}
        settings = identity.describe(dataclasses.replace(runtime.settings(), replicas=1), full)
        if settings:  # XLA, determinism, oneDNN round the attacks' gradients differently
            out["runtime"] = settings
        return out

    def finished(self, ctx, cell, path):
        record = os.path.join(path, self.RECORD)
        if not os.path.exists(record):
            return False
        # An audit of nothing (no export) has no records; any other needs them.
        return not files.read_json(record) or records.exists(path, records.AUDIT_FILE)

    def output(self, ctx, cell, inputs, path):
        out = files.read_json(os.path.join(path, self.RECORD))
        if out:  # where its per-example records are, relative to the workdir
            out["records"] = os.path.relpath(records.path_in(path, records.AUDIT_FILE),
                                             ctx.workdir)
        return out

    def compute(self, ctx, cell, inputs, path):
        row = inputs["row"]
        if row is None:
            files.write_json(os.path.join(path, self.RECORD), {})
            return
        ctx.log(f"[audit] {row.pretraining} / {row.ticket} ({row.regime}, seed {row.seed}) "
                f"-> {path}")
        run = runs.open_run(os.path.join(ctx.workdir, row.cell))
        result = audit_lib.audit_run(run, ctx.splits(run.dataset), "test", ctx.spec.audit)
        records.write(path, result.records, records.AUDIT_FILE)  # before: finished = both
        files.write_json(os.path.join(path, self.RECORD), result.to_json())
        if inputs["export"]:  # the export's ticket.json carries its audit
            export.add_audit(inputs["export"], result.to_json())


STAGES = {"pretrain": PretrainStage(), "imp": ImpStage(), "baseline": BaselineStage(),
          "transfer": TransferStage(), "export": ExportStage(), "audit": AuditStage()}


def directory_kind(ctx, cell):
    """The `<kind>` of a cell's directory name (`convert` for a converted checkpoint)."""
    stage = STAGES[cell.kind]
    return stage.cell_kind(ctx, cell) if hasattr(stage, "cell_kind") else cell.kind
