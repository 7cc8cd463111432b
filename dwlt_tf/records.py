"""Per-example records: which test examples a model classified correctly, clean and attacked.

A verdict compares a ticket with the dense model *on the same test examples* (the paired
rule of `verdicts.py`), so every run that reports test accuracies keeps one bit per test
example and outcome:

* a training run (`train.fit`, every transfer) keeps, for each selected checkpoint
  (`best_sa`, `best_ra`), `<checkpoint>/clean` and `<checkpoint>/robust` -- correct
  without attack, and correct under the run's evaluation attack (the attack behind its
  reported RA);
* an audit (`audit.py`) keeps one array per attack of its sequence (`clean`, `pgd`,
  `apgd_ce`, ..., `autoattack`, `worst_case`).

Arrays are indexed by example index (position in the split's canonical order) and carry
`order`, the split's `data.Splits.example_order` digest: two records are comparable only
when their orders agree. They are written as JSON (bits packed, base64) next to the
results they back -- atomically, following the umask, only when their content changes --
so a record is as durable as the result it explains, and a finished run re-reports from
a read-only copy. A record's mean is exactly the reported accuracy (checked when read).
"""
import base64
import dataclasses
import os
from typing import Dict

import numpy as np

from dwlt_tf import errors, files

FILE = "test_records.json"          # a training run's (its selected checkpoints on test)
AUDIT_FILE = "audit_records.json"   # an audit's (next to its audit.json)
VERSION = 1


class RecordsError(errors.UserError):
    """A record that is missing, damaged, or not comparable with the one it is paired with."""


@dataclasses.dataclass(frozen=True)
class ExampleRecords:
    """Outcomes per example of one split: `correct[name]` is a bool array of `count`."""
    split: str
    order: str
    count: int
    correct: Dict[str, np.ndarray]

    def __post_init__(self):
        for name, values in self.correct.items():
            values = np.asarray(values, bool)
            if values.shape != (self.count,):
                raise ValueError(f"record {name!r} has shape {values.shape}, expected "
                                 f"({self.count},)")
            self.correct[name] = values

    def accuracy(self, name) -> float:
        """Percent correct of outcome `name` (what the run reported)."""
        return 100.0 * float(np.count_nonzero(self.correct[name])) / max(self.count, 1)

    def to_json(self):
        return {"version": VERSION, "split": self.split, "order": self.order,
                "count": self.count,
                "correct": {name: _pack(values) for name, values in sorted(self.correct.items())}}

    @classmethod
    def from_json(cls, record):
        count = int(record["count"])
        return cls(record["split"], record["order"], count,
                   {name: _unpack(text, count) for name, text in record["correct"].items()})


def _pack(values):
    return base64.b64encode(np.packbits(np.asarray(values, bool)).tobytes()).decode()


def _unpack(text, count):
    bits = np.frombuffer(base64.b64decode(text.encode()), np.uint8)
    return np.unpackbits(bits, count=count).astype(bool)


def from_indexed(split, order, count, indices, outcomes: Dict[str, np.ndarray]):
    """Records from outcomes gathered in any order with their example `indices`; every
    index 0..count-1 must appear exactly once (anything else is a bug upstream)."""
    indices = np.asarray(indices, np.int64)
    if len(indices) != count or not np.array_equal(np.sort(indices), np.arange(count)):
        raise AssertionError(f"evaluation saw {len(indices)} examples with indices "
                             f"{np.unique(indices).size} distinct, expected each of 0..{count - 1}"
                             " once")
    correct = {}
    for name, values in outcomes.items():
        ordered = np.zeros(count, bool)
        ordered[indices] = np.asarray(values).astype(bool)
        correct[name] = ordered
    return ExampleRecords(split, order, count, correct)


def path_in(directory, name=FILE):
    return os.path.join(directory, name)


def exists(directory, name=FILE):
    return os.path.isfile(path_in(directory, name))


def write(directory, records: ExampleRecords, name=FILE):
    """Writes `<directory>/<name>` (only when its content changes)."""
    files.update_json(path_in(directory, name), records.to_json())


def read(directory, name=FILE) -> ExampleRecords:
    """The records of `directory`; a missing or damaged file is a RecordsError naming it."""
    return read_file(path_in(directory, name))


def read_file(path) -> ExampleRecords:
    """The records in file `path` (see `read`)."""
    try:
        return ExampleRecords.from_json(files.read_json(path))
    except FileNotFoundError:
        raise RecordsError(f"{path}: no per-example records (made by an older dwlt_tf? "
                           "re-running the same command writes them)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise RecordsError(f"{path} is damaged ({type(e).__name__}: {str(e)[:120]})") from None


def check_comparable(a: ExampleRecords, b: ExampleRecords, a_name, b_name):
    """Raises RecordsError (one line, naming both) unless `a` and `b` hold the same
    examples in the same order."""
    if a.order != b.order or a.split != b.split:
        raise RecordsError(
            f"per-example records of {a_name} ({a.split} split, order {a.order}) and of "
            f"{b_name} ({b.split} split, order {b.order}) hold different examples or another "
            "order: they cannot be compared example by example (were they evaluated on "
            "different data?)")
