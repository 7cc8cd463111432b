"""The double-win study: pre-train (or convert), find tickets with IMP, transfer each
ticket and the dense model under standard and adversarial training, audit, report, export.

The study is a graph of cells (`cells.py`), built once from the validated spec
(`study_spec.py`); each cell kind is a stage (`stages.py`); the report is assembled from
the cells' results (`assembly.py`). `Study.run` walks the graph: for every selected cell
whose inputs exist and that is not finished, it takes the cell's lease (`leases.py`),
computes it and releases the lease -- so any number of processes, jobs or hosts can
share one workdir and no cell is ever computed twice at once. Cells are keyed by what
determines their results (`cells/<kind>_<hash>/`): finished cells are never recomputed,
an interrupted cell resumes from its checkpoints, and changing one setting reruns
exactly the cells it affects.

Selections (`shard`, `only`) make a process compute a share of the cells: shards for N
processes, one cell for a scheduler's job (`write_plan`, `launcher.py`). A process with a
selection stops when its cells are done or wait for inputs others compute (with
`wait=True` it waits for them); a process without one waits for cells other processes
hold and then assembles `results.csv`, `report.md`, `plots/`, the export and the audit.
While cells finish, every process prints progress and refreshes `report.md` (marked
partial until the study is complete).
"""
import collections
import dataclasses
import hashlib
import os
import shlex
import socket
import time
from typing import Callable, List, Optional

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)

from dwlt_tf import (assembly, cells, checks, errors, files, identity, leases, preemption,
                     runtime, stages)
from dwlt_tf.study_spec import StudySpec, study_spec

CELL_RECORD = "cell.json"      # in a finished cell's directory: who computed it, how long
FAILED_RECORD = "failed.json"  # in a cell's directory while its last attempt failed


class CellSelectionError(errors.UserError):
    """An unknown cell address, or a cell whose inputs do not exist yet."""


class CellBusyError(errors.UserError):
    """The selected cell is being computed by another process (it holds the lease)."""


class WaitTimeoutError(errors.UserError):
    """`wait=True` waited longer than its timeout for cells other processes compute."""


class _StopWalking(Exception):
    """Internal: a selection without `wait` has nothing more it can do now."""


def shard(index, count):
    """A selection running share `index` (0-based) of `count` of the cells."""
    for name, value in (("count", count), ("index", index)):
        if not checks.is_int(value):
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


class Progress:
    """Progress over the whole study: cells done / total, elapsed, an estimate of what is
    left from the durations of the cells finished so far (by kind and regime)."""

    def __init__(self, log, total):
        self.log, self.total, self.start = log, total, time.time()
        self.durations = collections.defaultdict(list)

    @staticmethod
    def kind_of(cell):
        return f"{cell.kind}:{cell.regime}" if cell.regime else cell.kind

    def known(self, cell, seconds):
        self.durations[self.kind_of(cell)].append(seconds)

    def estimate(self, remaining):
        everything = [s for values in self.durations.values() for s in values]
        if not everything:
            return None
        fallback = sum(everything) / len(everything)
        return sum((sum(v) / len(v)) if (v := self.durations.get(self.kind_of(c))) else fallback
                   for c in remaining)

    def line(self, done, remaining):
        elapsed = time.time() - self.start
        left = self.estimate(remaining)
        return (f"study: {done}/{self.total} cells done, {_duration(elapsed)} elapsed"
                + (f", ~{_duration(left)} left" if left is not None and remaining else ""))


def _duration(seconds):
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Study:
    """Runs a study in `workdir` (see module docstring)."""

    def __init__(self, config, workdir, strategy=None, log: Callable = print,
                 select: Optional[Callable[[str], bool]] = None, wait: bool = False,
                 wait_timeout: Optional[float] = None, spec: Optional[StudySpec] = None):
        self.spec = spec or study_spec(config)
        self.graph = cells.build(self.spec)
        self.workdir = os.path.abspath(workdir)
        self.ctx = stages.Context(self.spec, self.graph, self.workdir, strategy, log)
        self.strategy = strategy
        self.multi_worker = strategy is not None and runtime.multi_worker(strategy)
        self.log, self.select = log, select
        # Without a selection the process promises the whole study: it always waits.
        self.wait = wait or select is None
        self.wait_timeout = wait_timeout
        self.ran: List[str] = []       # addresses of the cells this process computed
        self.finished: List[str] = []  # addresses found finished
        self.pending: List[str] = []   # addresses left for other processes (selections)

    # --------------------------------------------------------------------- run
    def run(self):
        """Computes the selected cells (see module docstring). Returns (rows, summary):
        every transfer's `stages.TransferRow` and the report's analysis; with a
        selection, (rows of the finished transfers, None)."""
        address = getattr(self.select, "address", None)
        if address is not None and address not in self.graph:
            raise CellSelectionError(f"--cell={address!r} is not a cell of this study; its "
                                     f"cells are: {', '.join(self.graph.cells)}")
        if self.multi_worker and address is None:
            raise errors.ConfigError(
                "a multi-worker strategy (several workers per cell) computes one cell per "
                "job: give --cell=<address> (the submitit launcher does)")
        if self.select is None:
            for spec in [self.spec.source] + self.spec.datasets:
                self.ctx.data_identity(spec)  # missing data fails now, before any work
        todo = [c for c in self.graph if self.select is None or self.select(c.address)]
        self._walk(todo)
        if self.select is not None:
            return self._finished_rows(), None
        return assembly.assemble(self.ctx)

    def _walk(self, todo):
        """Passes over `todo` until every cell is done, or -- without `wait` -- none can
        be done now; leaves `pending` naming what is left."""
        progress = Progress(self.log, len(self.graph))
        self._note_finished_durations(progress)
        deadline = None if not self.wait_timeout else time.time() + self.wait_timeout
        backoff, last_message = 1.0, None
        try:
            while todo:
                progressed, blocked = self._pass(todo, progress)
                if not todo:
                    break
                if progressed:
                    backoff = 1.0
                    continue
                self._refuse_or_wait(blocked, deadline)
                # Said again only when what it waits for changes (not a heartbeat's age).
                waiting_for = sorted((a, why[0]) for a, why in blocked.items())
                if waiting_for != last_message:
                    self.log(self._waiting_message(blocked))
                    last_message = waiting_for
                time.sleep(backoff)  # a stop request during the sleep is seen next pass
                backoff = min(backoff * 2, 60.0)
        except _StopWalking:
            pass
        self.pending = [c.address for c in todo]

    def _pass(self, todo, progress):
        """One pass: computes what it can. Returns (computed anything?, {address: why
        not}) and removes finished cells from `todo`."""
        progressed, blocked = False, {}
        for cell in list(todo):
            preemption.check(f"before cell {cell.address}")
            outcome = self._attempt(cell, progress, todo)
            if outcome in ("done", "computed"):
                todo.remove(cell)
                progressed = progressed or outcome == "computed"
            else:
                blocked[cell.address] = outcome
        return progressed, blocked

    def _attempt(self, cell, progress, todo):
        """Tries to finish `cell`: "done" (already), "computed", or why not: ("waiting",
        [missing addresses]) or ("busy", lease holder)."""
        try:
            resolved = stages.resolve(self.ctx, cell.address)
        except stages.NotReady as waiting:
            return ("waiting", waiting.missing)
        if resolved.finished:
            self._found_finished(cell)
            return "done"
        if self.multi_worker:
            return self._attempt_together(cell, resolved, progress, todo)
        lease, holder = leases.try_acquire(resolved.path, self.spec.leases)
        if lease is None:
            return ("busy", holder)
        try:
            self.ctx.resolved.pop(cell.address, None)  # finished meanwhile by the previous holder?
            resolved = stages.resolve(self.ctx, cell.address)
            if resolved.finished:
                self._found_finished(cell)
                return "done"
            seconds = self._compute(cell, resolved)
        finally:
            lease.release()
        self.ran.append(cell.address)
        progress.known(cell, seconds)
        remaining = [c for c in todo if c is not cell]
        done = len(self.graph) - len(remaining) if self.select is None else None
        self._report_computed(cell, seconds, progress, done, remaining)
        return "computed"

    def _attempt_together(self, cell, resolved, progress, todo):
        """One cell computed by every worker of a multi-worker job: the chief holds the
        lease (waiting for it) and writes; all agree first, then all compute."""
        chief, lease = self.ctx.chief, None
        if chief:
            backoff = 1.0
            while lease is None:
                lease, holder = leases.try_acquire(resolved.path, self.spec.leases)
                if lease is None:
                    self.log(f"study: {cell.address} is held by {holder.describe()}; waiting")
                    time.sleep(backoff)
                    backoff = min(2 * backoff, 60.0)
            self.ctx.resolved.pop(cell.address, None)
            resolved = stages.resolve(self.ctx, cell.address)
        try:
            if not runtime.all_agree(self.strategy, not resolved.finished):
                self._found_finished(cell)
                return "done"
            if chief:
                seconds = self._compute(cell, resolved)
            else:  # no output of its own; the work with collectives happens together
                started = time.time()
                if cell.kind in ("pretrain", "imp", "transfer"):
                    stages.STAGES[cell.kind].compute(self.ctx, cell, resolved.inputs,
                                                     resolved.path)
                seconds = time.time() - started
        finally:
            if lease is not None:
                lease.release()
        self.ran.append(cell.address)
        progress.known(cell, seconds)
        return "computed"

    def _compute(self, cell, resolved):
        stage = stages.STAGES[cell.kind]
        identity.claim(resolved.path, resolved.identity, what=f"{cell.kind} cell",
                       resolved=stage.identity(self.ctx, cell, resolved.inputs, full=True))
        failed = os.path.join(resolved.path, FAILED_RECORD)
        started = time.time()
        try:
            stages.STAGES[cell.kind].compute(self.ctx, cell, resolved.inputs, resolved.path)
        except preemption.Preempted:
            raise
        except BaseException as e:
            first = next((line for line in str(e).splitlines() if line.strip()), "")
            files.write_json(failed, {"address": cell.address, "error": f"{type(e).__name__}: "
                                      f"{first[:300]}", "owner": leases.owner_record(),
                                      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            raise
        seconds = time.time() - started
        if os.path.exists(failed):
            os.unlink(failed)
        files.write_json(os.path.join(resolved.path, CELL_RECORD), {
            "address": cell.address, "kind": cell.kind, "seconds": seconds,
            "host": socket.gethostname(), "pid": os.getpid(), "job": leases.job_id(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        self.ctx.resolved.pop(cell.address, None)
        return seconds

    def _found_finished(self, cell):
        if cell.address not in self.finished and cell.address not in self.ran:
            self.finished.append(cell.address)

    def _note_finished_durations(self, progress):
        """Durations of cells finished earlier (any process): the first estimates."""
        for cell in self.graph:
            resolved = self.ctx.resolved.get(cell.address)
            if resolved is None:
                try:
                    resolved = stages.resolve(self.ctx, cell.address)
                except stages.NotReady:
                    continue
            record = os.path.join(resolved.path or "", CELL_RECORD)
            if resolved.finished and os.path.exists(record):
                progress.known(cell, files.read_json(record)["seconds"])

    def _report_computed(self, cell, seconds, progress, done, remaining):
        headline = f"  {cell.address} done in {_duration(seconds)}"
        if cell.kind == "transfer":
            row = self.ctx.output(cell.address)
            headline += f": SA {row.sa:.2f}, RA {row.ra:.2f}"
            assembly.write_partial_report(self.ctx)
        if done is None:
            done = sum(1 for c in self.graph if self._is_finished(c))
        self.log(headline)
        self.log(progress.line(done, remaining))

    def _is_finished(self, cell):
        try:
            return stages.resolve(self.ctx, cell.address).finished
        except stages.NotReady:
            return False

    def _refuse_or_wait(self, blocked, deadline):
        """Without `wait`, a --cell that cannot run is an error naming why; with it, the
        wait ends at the deadline."""
        address = getattr(self.select, "address", None)
        if not self.wait and address is not None and address in blocked:
            why = blocked[address]
            if why[0] == "busy":
                raise CellBusyError(f"cell {address} is being computed by "
                                    f"{why[1].describe()}; re-run with --wait to wait for it")
            raise CellSelectionError(f"cell {address} cannot run yet: it needs "
                                     f"{', '.join(why[1])} first (or re-run with --wait)")
        if not self.wait:
            raise _StopWalking()
        if deadline is not None and time.time() > deadline:
            raise WaitTimeoutError(f"waited {self.wait_timeout:g} s; still "
                                   f"{self._waiting_message(blocked)[len('study: '):]}")

    def _waiting_message(self, blocked):
        busy = [f"{a} (held by {why[1].describe()})" for a, why in blocked.items()
                if why[0] == "busy"]
        needed = sorted({m for why in blocked.values() if why[0] == "waiting" for m in why[1]}
                        - set(blocked))
        parts = []
        if busy:
            parts.append(f"{len(busy)} cells busy in other processes: " + "; ".join(busy[:3])
                         + (" ..." if len(busy) > 3 else ""))
        if needed:
            parts.append(f"{len(blocked) - len(busy)} cells waiting for "
                         + ", ".join(needed[:3]) + (" ..." if len(needed) > 3 else ""))
        return "study: waiting -- " + "; ".join(parts or ["nothing"])

    def _finished_rows(self):
        return [self.ctx.output(c.address) for c in self.graph.of_kind("transfer")
                if self._is_finished(c)]

    # ------------------------------------------------------------------ status
    def status(self):
        """{kind: Counter(state)} and the notable cells [(address, state, detail)];
        computes nothing and writes nothing."""
        counts = collections.defaultdict(collections.Counter)
        notable = []
        for cell in self.graph:
            state, detail = self._state(cell)
            counts[cell.kind][state] += 1
            if state in ("running", "failed", "stalled"):
                notable.append((cell.address, state, detail))
        return counts, notable

    def _state(self, cell):
        try:
            resolved = stages.resolve(self.ctx, cell.address)
        except stages.NotReady as waiting:
            return "waiting", ", ".join(waiting.missing)
        if resolved.finished:
            return "done", ""
        holder = leases.inspect(resolved.path, self.spec.leases) \
            if os.path.isdir(resolved.path) else None
        if holder is not None:
            return ("stalled" if holder.stale else "running"), holder.describe()
        failed = os.path.join(resolved.path, FAILED_RECORD)
        if os.path.exists(failed):
            record = files.read_json(failed)
            return "failed", f"{record['error']} ({leases.describe(record['owner'])})"
        return "ready", ""

    # -------------------------------------------------------------------- plan
    def cells(self):
        """Every cell in dependency order: [{cell, kind, after, resources}]."""
        return [{"cell": c.address, "kind": c.kind, "after": list(c.needs),
                 "resources": dataclasses.asdict(c.resources)} for c in self.graph]


def write_plan(config, workdir, command, path):
    """Writes the study's cells as ready-to-run commands: `path` (JSON) and `path`.sh.

    `command` is the study command without selection flags (a list of arguments); each
    cell's command appends `--wait --cell=<address>`, and the last command -- the same study
    without a selection -- assembles results, report, export and audit. The JSON lists
    each cell with the cells it needs (`after`) and its resources, for schedulers with
    dependencies (SLURM `--dependency`, Kubernetes Jobs, Argo); the shell form runs them
    in order.
    """
    planned = Study(config, workdir, log=lambda *_: None).cells()
    for cell in planned:
        # --wait: a requeued duplicate of a running job waits for it instead of failing.
        cell["command"] = shlex.join(list(command) + ["--wait", f"--cell={cell['cell']}"])
    assemble = shlex.join(list(command))
    files.write_json(path, {"workdir": os.path.abspath(workdir), "cells": planned,
                            "assemble": {"command": assemble,
                                         "after": [c["cell"] for c in planned]}})
    lines = ["#!/bin/sh", "# Generated by trainers/study.py --plan: one study cell per line, "
             "in dependency order; the last line assembles the report.", "set -e"]
    lines += [c["command"] for c in planned] + [assemble]
    files.write_text(path + ".sh", "\n".join(lines) + "\n")
    return planned


def run(config, workdir, strategy=None, log=print, select=None, wait=False):
    """Validates, runs and reports the study. Returns (rows, summary); with a `select`ion
    (see `shard`, `only`) runs only those cells and returns (rows, None)."""
    return Study(config, workdir, strategy, log, select, wait).run()
