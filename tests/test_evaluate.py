"""Tests for evaluate.py's per-example outcomes (the records behind paired verdicts)."""
import dataclasses

import numpy as np

from conftest import mirrored_strategy
from dwlt_tf import attacks, evaluate

PGD2 = attacks.Attack(8 / 255, 2 / 255, 2)


def test_per_example_outcomes_reproduce_sa_and_ra_under_every_strategy(trained_resnet):
    model, splits = trained_resnet
    # 500 test images in batches of 96: five full batches and a short one of 20,
    # each split across the replicas of the mirrored strategy.
    single = evaluate.Evaluator(model, PGD2)(splits, "test", 96, seed=3, per_example=True)
    kept = single.records
    assert (kept.split, kept.count, set(kept.correct)) == ("test", 500, {"clean", "robust"})
    assert kept.order == splits.example_order("test")
    assert kept.accuracy("clean") == single.sa and kept.accuracy("robust") == single.ra
    assert 0 < single.ra < single.sa < 100
    mirrored = evaluate.Evaluator(model, PGD2, mirrored_strategy())(
        splits, "test", 96, seed=3, per_example=True)
    assert (mirrored.sa, mirrored.ra) == (single.sa, single.ra)
    for name in ("clean", "robust"):
        assert np.array_equal(mirrored.records.correct[name], kept.correct[name])
    # An odd number of examples: the last batch (7) splits 4 / 3 across the replicas.
    from dwlt_tf import data  # pylint: disable=import-outside-toplevel
    odd = data.load(dataclasses.replace(splits.spec, data_rate=0.15))
    assert odd.num_train == 135
    uneven = [evaluate.Evaluator(model, None, strategy)(odd, "train", 32, per_example=True)
              for strategy in (None, mirrored_strategy())]
    assert uneven[0].records.count == 135 and uneven[0].sa == uneven[1].sa
    assert np.array_equal(uneven[0].records.correct["clean"], uneven[1].records.correct["clean"])
    # Without per_example nothing is gathered and the numbers are the same.
    plain = evaluate.Evaluator(model, PGD2)(splits, "test", 96, seed=3)
    assert plain.records is None and (plain.sa, plain.ra) == (single.sa, single.ra)


def test_the_order_digest_names_the_examples_not_where_they_live(trained_resnet, tmp_path):
    import shutil  # pylint: disable=import-outside-toplevel
    from dwlt_tf import data  # pylint: disable=import-outside-toplevel
    _, splits = trained_resnet
    copy = tmp_path / "copy"
    shutil.copytree(splits.spec.path, copy)
    moved = data.load(data.DataSpec("imagefolder", path=str(copy), image_size=32,
                                    augment="cifar", stats="cifar10",
                                    classes=(0, 1, 2, 3, 4)))
    assert moved.example_order("test") == splits.example_order("test")
    assert splits.example_order("test", 100) != splits.example_order("test")
    assert splits.example_order("val") != splits.example_order("test")
    other_classes = data.load(data.DataSpec("imagefolder", path=str(copy), image_size=32,
                                            augment="cifar", stats="cifar10",
                                            classes=(5, 6, 7, 8, 9)))
    assert other_classes.example_order("test") != splits.example_order("test")
