"""Run identity: what makes two runs the same, and workdirs that belong to one run.

open_lth's rule: a unit of work is named by a hash of exactly what changes its result.
`describe(spec)` turns a spec dataclass into that description. Fields declared with
`neutral(...)` -- logging, checkpoint cadence, evaluation batch size, where the data
lives -- are left out, and so is every field at its default value, so that adding a
field with a default changes no existing key. Inputs enter by content: weights and
tickets by sha256, datasets by a fingerprint of what they hold, not where they are.

`claim(workdir, identity)` ties a workdir to one identity. The first call records it in
`<workdir>/run.json`; later calls with the same identity go on (resume an unfinished run
or report a finished one); a different identity stops with `RunIdentityError`, listing
the differing fields (old -> new), before any work. `overwrite=True` moves the old run
aside to `<workdir>.replaced-<UTC time>` -- nothing is ever deleted.

Defaults can change between versions while keys must stay stable, so `run.json` also
records the *resolved* identity -- every field, defaults included (`describe(...,
full=True)`) -- and a claim whose key matches but whose resolved settings differ (a
default changed since the run was made) is refused naming the field. The package
versions a run was made with are recorded too; a finished run reused under other
versions is reported with a `VersionWarning`, not refused.
"""
import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import os
import warnings

from dwlt_tf import errors, files

IDENTITY_FILE = "run.json"
_NEUTRAL = {"identity": False}


class RunIdentityError(errors.ConfigError):
    """A workdir already belongs to a run with another identity."""


class VersionWarning(UserWarning):
    """A finished run made with other package versions is being reused."""


# The packages whose versions can change a result (recorded in run.json).
PACKAGES = ("tensorflow", "tf-keras", "tensorflow-model-optimization", "cleverhans",
            "tensorflow-datasets")


def versions():
    """{package: version} of `PACKAGES` installed here (None when not installed)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def neutral(default):
    """A dataclass field that does not change results (left out of every identity)."""
    return dataclasses.field(default=default, metadata=_NEUTRAL)


def describe(value, full=False):
    """The JSON-able, result-affecting description of a spec (see module docstring):
    fields at their default left out, unless `full` (the resolved description)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for field in dataclasses.fields(value):
            if field.metadata.get("identity", True) is False:
                continue
            current = describe(getattr(value, field.name), full)
            if not full and field.default is not dataclasses.MISSING and \
                    current == describe(field.default):
                continue
            out[field.name] = current
        return out
    if isinstance(value, dict):
        return {str(k): describe(v, full) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe(v, full) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 1.0 and 1 are the same setting (and the same key)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "tolist"):
        return describe(value.tolist())
    raise TypeError(f"Cannot describe {type(value).__name__} {value!r} as a run identity")


def canonical(identity):
    """`identity` as it reads back from JSON (tuples become lists, 1.0 becomes 1)."""
    return json.loads(json.dumps(describe(identity), sort_keys=True))


def key(identity):
    """A short, stable hash of an identity: names the folder of a unit of work."""
    text = json.dumps(canonical(identity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def differences(old, new, prefix=""):
    """['field: old -> new', ...] between two identities (nested fields dotted)."""
    lines = []
    if isinstance(old, dict) and isinstance(new, dict):
        for name in sorted(set(old) | set(new)):
            where = f"{prefix}.{name}" if prefix else name
            if name not in old:
                lines += [f"{where}: (default) -> {_short(new[name])}"]
            elif name not in new:
                lines += [f"{where}: {_short(old[name])} -> (default)"]
            elif old[name] != new[name]:
                lines += differences(old[name], new[name], where)
        return lines
    return [f"{prefix or 'identity'}: {_short(old)} -> {_short(new)}"]


def _short(value):
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def read(workdir):
    """The identity recorded in `workdir`, or None."""
    path = os.path.join(workdir, IDENTITY_FILE)
    return files.read_json(path)["identity"] if os.path.exists(path) else None


# What dwlt_tf runs write into their workdirs. A workdir holding any of these but no
# record is a run whose settings cannot be checked (made by an older dwlt_tf); other
# files -- a scheduler's log, the user's notes -- do not make a run.
RUN_OUTPUTS = ("checkpoints", "best_sa", "best_ra", "result.json", "metrics.jsonl",
               "tensorboard", "transfer.json", "tickets", "train", "tuner", "trials",
               "weights", "cells", "export")


def _holds_a_run(workdir):
    return os.path.isdir(workdir) and any(name in RUN_OUTPUTS for name in os.listdir(workdir))


def move_aside(workdir):
    """Renames `workdir` to `<workdir>.replaced-<UTC time>[-n]`; returns the new path."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target, n = f"{workdir}.replaced-{stamp}", 1
    while os.path.exists(target):
        n += 1
        target = f"{workdir}.replaced-{stamp}-{n}"
    os.rename(workdir, target)
    return target


def claim(workdir, identity, overwrite=False, what="run", resolved=None):
    """Makes `workdir` the home of the run `identity` (see module docstring).

    `resolved` is the same identity with every default spelled out; when the workdir's
    record has one, they must agree. Returns the path the previous run was moved to
    (overwrite=True), else None. Raises RunIdentityError when the workdir belongs to
    another run, or holds files but no identity record (made by an older dwlt_tf, or not
    a run directory).
    """
    workdir = os.path.abspath(workdir)
    identity = canonical(identity)
    resolved = canonical(resolved) if resolved is not None else None
    recorded = read(workdir)
    moved = None
    if recorded is None and _holds_a_run(workdir):
        # Another process sharing the workdir (a distributed tuner, a study shard) writes
        # its record before its first output: outputs seen now mean a record to re-read.
        recorded = read(workdir)
    if recorded == identity:
        record = files.read_json(os.path.join(workdir, IDENTITY_FILE))
        old = record.get("resolved")
        if old is None or resolved is None or old == resolved:
            _check_versions(record.get("versions"), what)
            return None
        if not overwrite:  # same key, other resolved settings: a default changed since
            changes = "\n".join(f"  {line}" for line in differences(old, resolved))
            raise RunIdentityError(
                f"workdir {workdir} belongs to a {what} made with other values of settings "
                f"now at their defaults (a default changed since):\n{changes}\nUse a new "
                "workdir, or overwrite (trainers: --overwrite) to move the old one to "
                f"{workdir}.replaced-<time> (nothing is deleted).")
    if recorded is not None or _holds_a_run(workdir):
        if not overwrite:
            if recorded is not None:
                changes = "\n".join(f"  {line}" for line in differences(recorded, identity))
                problem = (f"workdir {workdir} belongs to another {what} "
                           f"(recorded in {IDENTITY_FILE}); this {what} differs in:\n{changes}")
            else:
                found = sorted(n for n in os.listdir(workdir) if n in RUN_OUTPUTS)
                problem = (f"workdir {workdir} holds run outputs ({', '.join(found)}) but no "
                           f"run record ({IDENTITY_FILE}): a run made by an older dwlt_tf, "
                           "whose settings cannot be checked")
            raise RunIdentityError(
                f"{problem}\nUse a new workdir, or overwrite (trainers: --overwrite) to move "
                f"the old one to {workdir}.replaced-<time> (nothing is deleted).")
        moved = move_aside(workdir)
    os.makedirs(workdir, exist_ok=True)
    files.write_json(os.path.join(workdir, IDENTITY_FILE), {
        "identity": identity, "key": key(identity), "what": what, "resolved": resolved,
        "versions": versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    return moved


def _check_versions(recorded, what):
    if not recorded:
        return
    now = versions()
    changed = [f"{name} {recorded.get(name)} -> {now[name]}" for name in PACKAGES
               if name in recorded and recorded.get(name) != now[name]]
    if changed:
        warnings.warn(f"reusing {what}s made with other package versions ({', '.join(changed)}"
                      "): results may differ slightly from what this install computes",
                      VersionWarning, stacklevel=3)
