"""Crash-safe file writing that follows the umask: nothing half-written is ever read back.

Files are written under a temporary name in the target's directory and renamed into
place (rename is atomic on POSIX filesystems); directories likewise. A crash leaves at
worst a `.tmp-*` entry, never a partial file or directory under the real name.

Permissions are what `open` and `mkdir` would give: files 0666 and directories 0777,
less the process's umask. (`tempfile` creates owner-only entries; they are widened
before the rename, so teammates, other hosts' accounts on a shared workdir and the TF
Serving user read the outputs as they read any other file.)

`update_text` / `update_json` write only when the content changes, so re-reporting a
finished run from a read-only copy (an archive, a colleague's results) writes nothing.

`write_failure(exc)` turns the errors of writing into a full or read-only filesystem
(Python's OSError, TensorFlow's checkpoint errors) into a one-line explanation naming
the path, for the trainers' boundary (`cli.reported`).
"""
import contextlib
import errno
import json
import os
import re
import shutil
import tempfile


def umask():
    """The process's umask, read without changing it (falls back to set-and-restore)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)  # not thread-safe, hence only the fallback
    os.umask(current)
    return current


def file_mode():
    return 0o666 & ~umask()


def dir_mode():
    return 0o777 & ~umask()


def make_temp_dir(parent, prefix):
    """A new directory in `parent` (created if needed) with the umask's permissions."""
    os.makedirs(parent, exist_ok=True)
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(path, dir_mode())
    return path


def write_bytes(path, data):
    """Writes `data` to `path` atomically (see module docstring)."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path, text):
    write_bytes(path, text.encode())


def write_json(path, obj):
    write_text(path, to_json(obj))


def to_json(obj):
    """The text `write_json` writes for `obj` (sorted keys, indented)."""
    return json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n"


def update_bytes(path, data):
    """Writes `data` unless `path` already holds exactly it; returns whether it wrote."""
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        pass
    write_bytes(path, data)
    return True


def update_text(path, text):
    return update_bytes(path, text.encode())


def update_json(path, obj):
    return update_text(path, to_json(obj))


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
    tmp = make_temp_dir(parent, f".tmp-{os.path.basename(path)}-")
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


# ------------------------------------------------------------- failures to write

_FULL = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
# TensorFlow's file errors (SaveV2, summary writers) carry the OS's text, not errno.
_TF_TEXTS = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
             "Read-only file system": errno.EROFS, "Permission denied": errno.EACCES}


def _existing_parent(path):
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def write_failure(exc):
    """A one-line explanation when `exc` is a failure to write to a full, read-only or
    forbidden filesystem (the user's to fix), else None (a bug keeps its traceback)."""
    code, path = None, None
    if isinstance(exc, OSError) and exc.errno in _FULL + _READ_ONLY:
        code, path = exc.errno, exc.filename
    elif type(exc).__module__.startswith("tensorflow") and hasattr(exc, "message"):
        # "{{function_node ..._device_/job:localhost/...}} /runs/t/ckpt_temp/part-...
        # .tempstate123; No space left on device [Op:SaveV2]"
        text = re.sub(r"\{\{.*?\}\}", "", str(exc.message))
        code = next((c for t, c in _TF_TEXTS.items() if t in text), None)
        found = re.search(r"(/[^\s;,'\"]+)", text)
        path = re.sub(r"\.tempstate\d+$", "", found.group(1)) if found else None
    if code is None:
        return None
    where = f" {path}" if path else ""
    if code in _FULL:
        try:
            free = shutil.disk_usage(_existing_parent(path or os.getcwd())).free
            room = f" ({free / 1e6:.0f} MB free there)"
        except OSError:
            room = ""
        return (f"no space left writing{where}{room}: free space on that filesystem (old "
                "runs, checkpoints, .tmp-* leftovers) or choose another output location; "
                "finished outputs are intact and re-running the same command resumes")
    reason = "read-only filesystem" if code == errno.EROFS else "permission denied"
    return (f"cannot write{where} ({reason}): choose an output location you can write to "
            "(a finished run is reported from a read-only copy without writing)")
