"""The study's cell graph: every unit of work, its address, what it needs, its resources.

`build(spec)` is a pure function of the validated `StudySpec`: nothing is read from disk.
Everything that walks the study -- a run, `--shard`, `--cell`, `--plan`, `--status`, the
submitit launcher and the report -- walks this one graph, in its order (dependencies
first; within a pre-training, its dense transfers before its IMP run, so the first
results arrive early).

A cell's *address* says what it is (this module is the one place that builds them):

  pretrain:<name>                     train (or convert) a pre-training
  imp:<name>                          IMP tickets of a pre-training on the source task
  imp:<name>:imp_2by4                 2:4 IMP tickets (4:4 -> 3:4 -> 2:4, with rewinding)
  baseline:<name>:omp:r<k>            one-shot magnitude pruning at ticket k's sparsity
  baseline:<name>:random:r<k>:s<seed> random pruning at ticket k's sparsity, per seed
  baseline:<name>:omp_2by4            one-shot 2:4 magnitude pruning of theta0
  transfer:<name>:<method>:<dense|r<k>|2by4>:<dataset>@<rate>:<regime>:s<seed>
  export                              the chosen ticket as a TF Serving SavedModel
  audit:<transfer address>            robustness audit of a dense model (first seed)
  audit:export                        robustness audit of the exported ticket

A cell's *identity* (what names its directory, `cells/<kind>_<hash>/`) is its recipe
-- the spec-level settings here -- plus the content hashes of its inputs, which the
stages (`stages.py`) read from its inputs' records once they exist.
"""
import dataclasses
from typing import Dict, Iterator, List, Optional, Tuple

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)

from dwlt_tf import data, pruning, report
from dwlt_tf.study_spec import StudySpec

KINDS = ("pretrain", "imp", "baseline", "transfer", "export", "audit")
REGIMES = report.REGIMES
EXPORT = "export"
AUDIT_EXPORT = "audit:export"


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one cell's job asks of a scheduler."""
    gpus: int
    cpus: int
    mem_gb: int
    timeout_min: int
    nodes: int = 1
    tasks_per_node: int = 1


@dataclasses.dataclass(frozen=True)
class Cell:
    """One unit of work. Fields beyond `needs` say which one (None where they do not
    apply to the kind)."""
    address: str
    kind: str
    needs: Tuple[str, ...]
    resources: Resources
    pretraining: Optional[str] = None
    method: Optional[str] = None           # dense | a `pruning.METHODS` name
    round: Optional[int] = None            # the ticket's IMP round (None: dense, N:M)
    dataset: Optional[data.DataSpec] = None
    regime: Optional[str] = None
    seed: Optional[int] = None
    target: Optional[str] = None           # audit: the transfer (or "export") audited

    @property
    def ticket(self):
        """The report's name of a transfer's ticket: "dense", "round k" or its N:M
        pattern ("2:4")."""
        return ticket_label(self.method, self.round)


def ticket_label(method, round_):
    if method == "dense":
        return "dense"
    if pruning.METHODS[method].nm is not None:
        return pruning.METHODS[method].pattern
    return f"round {round_}"


# ------------------------------------------------------------------- addresses

def pretrain_address(name):
    return f"pretrain:{name}"


def imp_address(name, method="imp"):
    return f"imp:{name}" + ("" if method == "imp" else f":{method}")


def baseline_address(name, method, round_, seed=None):
    return (f"baseline:{name}:{method}" + (f":r{round_}" if round_ is not None else "")
            + (f":s{seed}" if seed is not None else ""))


def transfer_address(name, method, round_, dataset: data.DataSpec, regime, seed):
    ticket = ticket_label(method, round_).replace("round ", "r").replace(":", "by")
    return (f"transfer:{name}:{method}:{ticket}:{dataset.label}@{dataset.data_rate:g}:"
            f"{regime}:s{seed}")


def audit_address(target):
    return f"audit:{target}"


# ----------------------------------------------------------------------- graph

@dataclasses.dataclass
class Graph:
    """The cells of a study in dependency order."""
    cells: Dict[str, Cell]

    def __iter__(self) -> Iterator[Cell]:
        return iter(self.cells.values())

    def __len__(self):
        return len(self.cells)

    def __contains__(self, address):
        return address in self.cells

    def __getitem__(self, address) -> Cell:
        return self.cells[address]

    def of_kind(self, kind) -> List[Cell]:
        return [c for c in self.cells.values() if c.kind == kind]

    def upstream(self, address) -> List[str]:
        """Every cell `address` depends on, directly or not (dependency order)."""
        seen, stack = set(), list(self.cells[address].needs)
        while stack:
            needed = stack.pop()
            if needed not in seen and needed in self.cells:
                seen.add(needed)
                stack.extend(self.cells[needed].needs)
        return [a for a in self.cells if a in seen]


def resources(spec: StudySpec) -> Resources:
    launcher = spec.launcher
    return Resources(launcher.gpus_per_cell, launcher.cpus_per_cell, launcher.mem_gb,
                     launcher.timeout_min, launcher.nodes, launcher.tasks_per_node)


def build(spec: StudySpec) -> Graph:
    """The graph of `spec` (see module docstring); reads nothing from disk."""
    res = resources(spec)
    cells: Dict[str, Cell] = {}

    def add(cell):
        cells[cell.address] = cell

    for name in _pretraining_order(spec):
        entry = spec.pretrainings[name]
        weights_needs = (pretrain_address(name),) if entry.has_cell else ()
        if entry.has_cell:
            add(Cell(pretrain_address(name), "pretrain", (pretrain_address(entry.init),)
                     if entry.init else (), res, pretraining=name))
        for transfer in _transfers(spec, name, "dense", None, weights_needs, res):
            add(transfer)
        add(Cell(imp_address(name), "imp", weights_needs, res, pretraining=name, method="imp"))
        for round_ in spec.ticket_rounds:
            for transfer in _transfers(spec, name, "imp", round_, (imp_address(name),), res):
                add(transfer)
        for method in spec.methods:
            if method == "imp":
                continue
            if pruning.METHODS[method].nm is not None:  # 2:4: one ticket per method
                if pruning.METHODS[method].iterative:
                    address, needs = imp_address(name, method), weights_needs
                    add(Cell(address, "imp", needs, res, pretraining=name, method=method))
                else:
                    address = baseline_address(name, method, None)
                    add(Cell(address, "baseline", weights_needs, res, pretraining=name,
                             method=method))
                for transfer in _transfers(spec, name, method, None, (address,), res):
                    add(transfer)
                continue
            for round_ in spec.baseline_rounds:
                # A random mask per seed (its spread belongs in the seeds' spread); OMP's
                # mask is a function of the weights.
                for seed in (spec.seeds if method == "random" else [None]):
                    address = baseline_address(name, method, round_, seed)
                    add(Cell(address, "baseline", (imp_address(name),) + weights_needs, res,
                             pretraining=name, method=method, round=round_, seed=seed))
                    for transfer in _transfers(spec, name, method, round_, (address,), res,
                                               seeds=[seed] if seed is not None else None):
                        add(transfer)
    transfers = tuple(c.address for c in cells.values() if c.kind == "transfer")
    if spec.export.get("enabled", True):
        add(Cell(EXPORT, "export", transfers, res))
    if spec.audit is not None:
        first = spec.seeds[0]
        for cell in [c for c in cells.values() if c.kind == "transfer"]:
            if cell.method == "dense" and cell.seed == first:
                add(Cell(audit_address(cell.address), "audit", (cell.address,), res,
                         target=cell.address))
        if EXPORT in cells:
            add(Cell(AUDIT_EXPORT, "audit", (EXPORT,), res, target=EXPORT))
    return Graph(cells)


def _pretraining_order(spec):
    """Pre-trainings in config order, each after the one it starts from (`init`)."""
    order, visiting = [], set()

    def visit(name):
        if name in order:
            return
        visiting.add(name)
        init = spec.pretrainings[name].init
        if init and init not in visiting:
            visit(init)
        order.append(name)
    for name in spec.pretrainings:
        visit(name)
    return order


def _transfers(spec, name, method, round_, needs, res, seeds=None):
    for dataset in spec.datasets:
        for regime in REGIMES:
            for seed in seeds or spec.seeds:
                yield Cell(transfer_address(name, method, round_, dataset, regime, seed),
                           "transfer", tuple(needs), res, pretraining=name, method=method,
                           round=round_, dataset=dataset, regime=regime, seed=seed)
