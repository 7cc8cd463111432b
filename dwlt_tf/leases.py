"""Leases: a unit of work (a study cell) is computed by exactly one process at a time.

A process takes the lease of a cell directory by creating `<dir>/lease.json` with an
atomic exclusive create (`O_CREAT | O_EXCL`); the file names its owner (host, pid and
the pid's start time, the scheduler's job id when there is one, start time) and a token.
While it works, a thread refreshes the file's modification time (the heartbeat). The
lease is released -- the file removed -- when the work ends, on success or failure.

Another process finding the file reads it:

* held by a live owner: the cell is busy -- skip it, or wait;
* stale: no heartbeat for `stale_seconds`, or an owner process on this host that is gone
  (pid not running, or running but started at another time: a reused pid). A stale lease
  is taken over: renamed away (atomic: of several contenders exactly one succeeds), then
  created afresh by the taker, who resumes the cell from its checkpoints.

What this relies on, on a filesystem shared by several hosts (NFSv3+, Lustre, GPFS,
CephFS, and local disks): exclusive create and rename are atomic, and a file's
modification time is set by the file server. Heartbeat ages are measured against the
server's clock (the mtime of a probe file written next to the lease), so clocks of
different hosts need not agree. A host that loses contact with the filesystem for longer
than `stale_seconds` can have its cell taken over; the heartbeat thread notices that its
lease is gone (`Lease.lost`), and the trainers stop at the next safe point.
"""
import contextlib
import dataclasses
import json
import os
import socket
import threading
import time
import uuid
from typing import Optional

from dwlt_tf import preemption

LEASE_FILE = "lease.json"
# Environment variables naming the scheduler job a process belongs to, most specific first.
_JOB_VARIABLES = ("SUBMITIT_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID", "JOB_ID",
                  "KUBERNETES_POD_NAME", "HOSTNAME_JOB")


@dataclasses.dataclass(frozen=True)
class Settings:
    """How often a holder refreshes its lease and when others consider it dead."""
    heartbeat_seconds: float = 30.0
    stale_seconds: float = 300.0

    def __post_init__(self):
        from dwlt_tf import checks  # pylint: disable=import-outside-toplevel
        checks.number("leases.heartbeat_seconds", self.heartbeat_seconds, 0.0, low_open=True)
        checks.number("leases.stale_seconds", self.stale_seconds, 0.0, low_open=True)
        if self.stale_seconds <= 2 * self.heartbeat_seconds:
            checks.fail("leases.stale_seconds", self.stale_seconds, "must exceed twice "
                        f"leases.heartbeat_seconds={self.heartbeat_seconds} (a missed "
                        "heartbeat is not a dead owner)")


def _start_time(pid):
    """A process's start time (clock ticks since boot), or None if unknown / not running."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def job_id():
    """The scheduler job this process runs in (SLURM, submitit, ...), or None."""
    for name in _JOB_VARIABLES:
        if os.environ.get(name):
            task = os.environ.get("SLURM_ARRAY_TASK_ID")
            value = os.environ[name]
            return f"{value}_{task}" if name == "SLURM_ARRAY_JOB_ID" and task else value
    return None


def owner_record():
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": _start_time(os.getpid()), "job": job_id(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": uuid.uuid4().hex}


def describe(owner):
    """"host:pid (job J), started T" for messages."""
    job = f" (job {owner['job']})" if owner.get("job") else ""
    return f"{owner.get('host')}:{owner.get('pid')}{job}, started {owner.get('started')}"


def _filesystem_now(directory):
    """The file server's current time, as the mtime of a file written now (this host's
    clock where the directory cannot be written: a read-only copy being inspected)."""
    probe = os.path.join(directory, f".clock-{uuid.uuid4().hex}")
    try:
        with open(probe, "w"):
            pass
        return os.stat(probe).st_mtime
    except OSError:
        return time.time()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)


@dataclasses.dataclass
class Holder:
    """Who holds a lease and how fresh its heartbeat is."""
    owner: dict
    heartbeat_age: float      # seconds since the last heartbeat (server clock)
    stale: bool
    reason: str = ""          # why it is stale

    def describe(self):
        return f"{describe(self.owner)}, heartbeat {self.heartbeat_age:.0f} s ago"


def inspect(directory, settings: Settings) -> Optional[Holder]:
    """The lease holder of `directory`, or None when nobody holds it."""
    path = os.path.join(directory, LEASE_FILE)
    try:
        with open(path) as f:
            owner = json.load(f)
        mtime = os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # Being written this instant (created, not yet filled): a live holder.
        return Holder({"host": "?", "pid": "?"}, 0.0, False)
    age = max(0.0, _filesystem_now(directory) - mtime)
    if age > settings.stale_seconds:
        return Holder(owner, age, True, f"no heartbeat for {age:.0f} s")
    if owner.get("host") == socket.gethostname() and owner.get("pid") is not None:
        started = _start_time(owner["pid"])
        if started is None or (owner.get("pid_start") is not None
                               and started != owner["pid_start"]):
            return Holder(owner, age, True, f"process {owner['pid']} on this host is gone")
    return Holder(owner, age, False)


class Lease:
    """A held lease; `release()` (or leaving `acquire`'s block) gives it up."""

    def __init__(self, directory, owner, settings):
        self.directory, self.owner, self.settings = directory, owner, settings
        self.path = os.path.join(directory, LEASE_FILE)
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name=f"lease-heartbeat-{os.path.basename(directory)}")
        self._thread.start()

    def _still_ours(self):
        try:
            with open(self.path) as f:
                return json.load(f).get("token") == self.owner["token"]
        except (OSError, ValueError):
            return False

    def _beat(self):
        while not self._stop.wait(self.settings.heartbeat_seconds):
            if not self._still_ours():
                # Taken over (this process looked dead, e.g. cut off from the filesystem
                # for longer than stale_seconds): stop at the next safe point.
                self.lost = True
                preemption.request(f"losing the lease of {self.directory}")
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self):
        self._stop.set()
        self._thread.join()
        if self._still_ours():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def _create(path, owner):
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    with os.fdopen(fd, "w") as f:
        json.dump(owner, f)
        f.flush()
        os.fsync(f.fileno())


def try_acquire(directory, settings: Settings):
    """(Lease, None) when this process now holds `directory`'s lease -- taking over a
    stale one -- else (None, Holder) naming the live holder."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LEASE_FILE)
    for _ in range(5):  # each round: create, or judge the holder and maybe take over
        owner = owner_record()
        try:
            _create(path, owner)
            return Lease(directory, owner, settings), None
        except FileExistsError:
            pass
        holder = inspect(directory, settings)
        if holder is None:
            continue  # released between our create and our look: try again
        if not holder.stale:
            return None, holder
        # Take the stale lease away: of several contenders, one rename succeeds. Check
        # that what was renamed is the stale lease and not a fresh one created meanwhile.
        aside = f"{path}.stale-{owner['token']}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            continue
        try:
            with open(aside) as f:
                renamed = json.load(f)
        except (OSError, ValueError):
            renamed = {}
        if renamed.get("token") not in (None, holder.owner.get("token")):
            with contextlib.suppress(OSError):  # someone's fresh lease: put it back
                os.link(aside, path)
            os.unlink(aside)
            continue
        os.unlink(aside)
    holder = inspect(directory, settings)
    return None, holder or Holder({"host": "?", "pid": "?"}, 0.0, False)
