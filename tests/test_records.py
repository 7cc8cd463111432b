"""Tests for records.py: per-example records round-trip, are checked, and name bad files."""
import json
import os

import numpy as np
import pytest

from dwlt_tf import records


def _records(count=13, order="13:abc", seed=0):
    rng = np.random.default_rng(seed)
    return records.ExampleRecords("test", order, count, {
        "best_sa/clean": rng.random(count) < 0.5, "best_ra/robust": rng.random(count) < 0.3})


def test_round_trip_is_exact_for_counts_that_are_not_multiples_of_eight(tmp_path):
    for count in (1, 7, 8, 13, 1001):
        kept = _records(count, f"{count}:x", seed=count)
        records.write(str(tmp_path), kept)
        back = records.read(str(tmp_path))
        assert (back.split, back.order, back.count) == ("test", f"{count}:x", count)
        for name, values in kept.correct.items():
            assert np.array_equal(back.correct[name], values)
            assert back.accuracy(name) == 100.0 * values.sum() / count


def test_the_file_is_compact_and_rewritten_only_when_it_changes(tmp_path):
    kept = _records(10000, "10000:x")
    records.write(str(tmp_path), kept)
    path = records.path_in(str(tmp_path))
    assert os.path.getsize(path) < 4 * 10000 / 8 + 500  # two arrays, bits in base64
    before = os.stat(path).st_mtime_ns
    records.write(str(tmp_path), kept)
    assert os.stat(path).st_mtime_ns == before


def test_outcomes_gathered_in_any_order_land_at_their_index():
    indices = np.array([3, 0, 4, 1, 2])
    kept = records.from_indexed("test", "5:x", 5, indices,
                                {"clean": np.array([1, 0, 1, 1, 0], np.int32)})
    assert kept.correct["clean"].tolist() == [False, True, False, True, True]


@pytest.mark.parametrize("indices", [[0, 1, 2, 3], [0, 1, 1, 3, 4], [0, 1, 2, 3, 5]])
def test_a_missing_or_repeated_example_is_a_bug(indices):
    with pytest.raises(AssertionError, match="expected each of 0..4 once"):
        records.from_indexed("test", "5:x", 5, np.array(indices),
                             {"clean": np.ones(len(indices), np.int32)})


def test_records_of_other_examples_are_refused_naming_both_cells():
    ours, theirs = _records(order="13:abc"), _records(order="13:def")
    with pytest.raises(records.RecordsError) as error:
        records.check_comparable(ours, theirs, "cells/transfer_ticket", "cells/transfer_dense")
    message = str(error.value)
    assert "\n" not in message
    assert "cells/transfer_ticket" in message and "cells/transfer_dense" in message
    records.check_comparable(ours, _records(order="13:abc", seed=5), "a", "b")  # same order


def test_missing_and_damaged_files_are_one_line_errors(tmp_path):
    with pytest.raises(records.RecordsError, match="no per-example records"):
        records.read(str(tmp_path))
    with open(records.path_in(str(tmp_path)), "w") as f:
        json.dump({"split": "test", "order": "x", "count": 5}, f)
    with pytest.raises(records.RecordsError, match="is damaged"):
        records.read(str(tmp_path))


def test_wrong_lengths_are_refused():
    with pytest.raises(ValueError, match=r"has shape \(4,\), expected \(5,\)"):
        records.ExampleRecords("test", "5:x", 5, {"clean": np.ones(4, bool)})
