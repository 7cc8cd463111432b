"""Crash-safe file writing: nothing half-written is ever read back.

Files are written under a temporary name in the target's directory and renamed into
place (rename is atomic on POSIX filesystems); directories likewise. A crash leaves at
worst a `.tmp-*` entry, never a partial file or directory under the real name.
"""
import contextlib
import json
import os
import shutil
import tempfile


def write_text(path, text):
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses  # pylint: disable=import-outside-toplevel
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"Cannot write {type(value).__name__} to JSON")


def read_json(path):
    with open(path) as f:
        return json.load(f)


@contextlib.contextmanager
def atomic_directory(path, overwrite=False):
    """Yields a temporary directory that becomes `path` when the block succeeds.

    Refuses an existing `path` unless `overwrite`, in which case the old directory is
    replaced only after the new one is complete.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path!r} already exists")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(path)}-", dir=parent)
    try:
        yield tmp
        if os.path.exists(path):
            trash = tempfile.mkdtemp(prefix=".trash-", dir=parent)
            os.rename(path, os.path.join(trash, "old"))
            os.rename(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
