"""Tests for dwlt_tf.files: atomic writes that follow the umask, writes only on change, and
explanations of writes to full or read-only filesystems."""
import errno
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dwlt_tf import files, tickets


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_every_atomic_write_follows_the_umask(tmp_path, umask):
    assert files.umask() == umask
    files.write_text(str(tmp_path / "a" / "report.md"), "text")
    files.write_json(str(tmp_path / "a" / "run.json"), {"k": 1})
    files.update_bytes(str(tmp_path / "a" / "plot.png"), b"\x89PNG")
    with files.atomic_directory(str(tmp_path / "weights")) as tmp:
        with open(os.path.join(tmp, "weights.h5"), "w") as f:
            f.write("w")
    ticket = tickets.save(str(tmp_path / "ticket"), {"conv1": np.ones((3, 3), bool)})
    for path in ("a/report.md", "a/run.json", "a/plot.png", "weights/weights.h5",
                 "ticket/masks.npz", "ticket/ticket.json"):
        assert _mode(tmp_path / path) == 0o666 & ~umask, path
    for path in ("a", "weights", ticket):
        assert _mode(tmp_path / path) == 0o777 & ~umask, path
    temp = files.make_temp_dir(str(tmp_path / "export"), ".tmp-1-")
    assert _mode(temp) == 0o777 & ~umask
    # TensorFlow's own files (checkpoints) follow the umask by themselves.
    tf.train.Checkpoint(v=tf.Variable(1.0)).write(str(tmp_path / "ckpt" / "ckpt"))
    assert all(_mode(p) == 0o666 & ~umask for p in (tmp_path / "ckpt").iterdir())


def test_update_writes_only_when_the_content_changes(tmp_path):
    path = str(tmp_path / "results.csv")
    assert files.update_text(path, "a,b\n") is True
    inode, mtime = os.stat(path).st_ino, os.stat(path).st_mtime_ns
    assert files.update_text(path, "a,b\n") is False
    assert (os.stat(path).st_ino, os.stat(path).st_mtime_ns) == (inode, mtime)
    assert files.update_json(path, {"a": 1}) is True and files.read_json(path) == {"a": 1}


def test_full_and_read_only_filesystems_are_explained_naming_the_path(tmp_path):
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "w" / "run.json"))
    text = files.write_failure(full)
    assert text.startswith(f"no space left writing {tmp_path / 'w' / 'run.json'} (")
    assert "MB free there): free space" in text and "re-running the same command" in text
    read_only = OSError(errno.EROFS, "Read-only file system", "/archive/run/transfer.json")
    assert files.write_failure(read_only).startswith(
        "cannot write /archive/run/transfer.json (read-only filesystem)")
    # TensorFlow's checkpoint writer reports the OS's text, not an errno.
    saved = tf.errors.ResourceExhaustedError(
        None, None, "/runs/t/checkpoints/ckpt-3_temp/part-00000-of-00001.data-00000-of-00001"
        ".tempstate123; No space left on device [Op:SaveV2]")
    assert files.write_failure(saved).startswith(
        "no space left writing /runs/t/checkpoints/ckpt-3_temp/part-00000-of-00001")
    # Anything else stays a bug (None: the caller re-raises it with its traceback).
    assert files.write_failure(OSError(errno.EBADF, "Bad file descriptor")) is None
    assert files.write_failure(ValueError("No space left on device")) is None
    assert files.write_failure(tf.errors.InvalidArgumentError(None, None, "shape")) is None


def _tmpfs(path, size="2m"):
    os.makedirs(path)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the mapping is tested above")
    return path


def test_a_real_full_disk_during_a_checkpoint_is_one_line(tmp_path):
    disk = _tmpfs(tmp_path / "disk")
    try:
        code = ("import sys, numpy as np, tensorflow as tf\n"
                "from dwlt_tf import cli\n"
                "with cli.reported('demo'):\n"
                "    v = tf.Variable(np.zeros((1024, 1024), np.float32))\n"
                f"    tf.train.Checkpoint(v=v).write({str(disk / 'ckpt' / 'ckpt')!r})\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 2, out.stderr[-3000:]
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith(f"demo: error: no space left writing {disk}/ckpt/"), last
        assert "Traceback" not in out.stderr
        assert not os.path.exists(disk / "ckpt" / "ckpt.index")  # nothing looks finished
    finally:
        subprocess.run(["umount", str(disk)], check=False)
