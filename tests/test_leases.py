"""Tests for dwlt_tf.leases: one holder at a time, heartbeats, stale takeover, release."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from dwlt_tf import leases, preemption

FAST = leases.Settings(heartbeat_seconds=0.2, stale_seconds=1.0)


def test_one_holder_at_a_time_and_release(tmp_path):
    lease, holder = leases.try_acquire(str(tmp_path), FAST)
    assert lease is not None and holder is None
    record = json.load(open(tmp_path / leases.LEASE_FILE))
    assert record["pid"] == os.getpid() and record["token"] == lease.owner["token"]
    again, holder = leases.try_acquire(str(tmp_path), FAST)  # busy: a live holder
    assert again is None and holder.owner["token"] == lease.owner["token"]
    assert not holder.stale and f":{os.getpid()}" in holder.describe()
    time.sleep(1.5)  # the heartbeat keeps it fresh past stale_seconds
    assert leases.try_acquire(str(tmp_path), FAST)[0] is None
    lease.release()
    assert not (tmp_path / leases.LEASE_FILE).exists()
    other, _ = leases.try_acquire(str(tmp_path), FAST)
    assert other is not None
    other.release()


def test_exactly_one_of_many_contenders_wins(tmp_path):
    won, barrier = [], threading.Barrier(8)

    def contend():
        barrier.wait()
        lease, _ = leases.try_acquire(str(tmp_path), FAST)
        if lease is not None:
            won.append(lease)
    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    won[0].release()


def _lease_of_a_process_that_dies(directory):
    code = (f"from dwlt_tf import leases\n"
            f"lease, _ = leases.try_acquire({str(directory)!r}, leases.Settings(0.2, 1.0))\n"
            "print(lease.owner['token'], flush=True)\n"
            "import os; os._exit(0)  # dies holding it (no release), like a SIGKILL\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    return out.stdout.split()[-1]


def test_a_dead_owner_on_this_host_is_taken_over_at_once(tmp_path):
    token = _lease_of_a_process_that_dies(tmp_path)
    holder = leases.inspect(str(tmp_path), FAST)
    assert holder.stale and "is gone" in holder.reason and holder.owner["token"] == token
    lease, _ = leases.try_acquire(str(tmp_path), leases.Settings(30, 3600))  # long stale time
    assert lease is not None and lease.owner["token"] != token
    lease.release()


def test_an_owner_on_another_host_is_taken_over_after_the_stale_time(tmp_path):
    record = leases.owner_record()
    record.update(host="elsewhere.cluster", pid=12345)
    (tmp_path / leases.LEASE_FILE).write_text(json.dumps(record))
    assert leases.try_acquire(str(tmp_path), FAST)[0] is None  # fresh: busy
    time.sleep(1.3)  # no heartbeat for longer than stale_seconds
    holder = leases.inspect(str(tmp_path), FAST)
    assert holder.stale and "no heartbeat" in holder.reason
    lease, _ = leases.try_acquire(str(tmp_path), FAST)
    assert lease is not None
    assert not [p for p in os.listdir(tmp_path) if p.startswith(leases.LEASE_FILE + ".")]
    lease.release()


def test_a_holder_whose_lease_was_taken_over_is_asked_to_stop(tmp_path):
    with preemption.graceful():
        lease, _ = leases.try_acquire(str(tmp_path), FAST)
        record = dict(lease.owner, token="someone-else")  # taken over behind its back
        (tmp_path / leases.LEASE_FILE).write_text(json.dumps(record))
        deadline = time.time() + 5
        while not lease.lost and time.time() < deadline:
            time.sleep(0.05)
        assert lease.lost
        with pytest.raises(preemption.Preempted, match="losing the lease of"):
            preemption.check()
        lease.release()
    assert (tmp_path / leases.LEASE_FILE).exists()  # the new holder's lease stays


@pytest.mark.parametrize("kwargs,match", [
    (dict(heartbeat_seconds=0), r"leases.heartbeat_seconds=0"),
    (dict(heartbeat_seconds=10, stale_seconds=15), r"leases.stale_seconds=15: must exceed"),
])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        leases.Settings(**kwargs)
