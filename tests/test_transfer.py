"""Tests for dwlt_tf.transfer: a transfer means the same on one or several replicas."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from conftest import bundled_cifar_splits, mirrored_strategy
from dwlt_tf import (attacks, convert, models, pipeline, pruning, pruning_wrapper, runs, train)


@pytest.fixture(scope="module")
def source():
    tf_keras.utils.set_random_seed(0)
    model = models.build_resnet("resnet18", 10, "cifar", base_width=8)
    meta = {"arch": "resnet18", "stem": "cifar", "base_width": 8, "num_classes": 10}
    kernels = pruning_wrapper.get_kernels(pruning_wrapper.wrap(model))
    return convert.Converted(model, {}, meta), pruning.one_shot_magnitude_masks(kernels, 0.5)


def _one_step_update(strategy, source, masks, splits, mode, per_replica_bn=False):
    converted, _ = source
    spec = train.TrainSpec(mode=mode, batch_size=32, lr=0.05, verbose=0,
                           attack=attacks.Attack(8 / 255, 2 / 255, 2) if mode == "pgd" else None,
                           precision="float64")
    build = runs.model_fn(converted, masks, splits, seed=3)
    if per_replica_bn:  # what dwlt-tf did before: each replica's own batch statistics
        original = models.build_resnet

        def unsynced(*args, **kwargs):
            kwargs["sync_batchnorm"] = False
            return original(*args, **kwargs)
        models.build_resnet = unsynced
    try:
        with train.precision_policy("float64"):
            run = train.TrainingRun(build, splits, spec, "/tmp/unused-transfer-step", strategy)
            before = [v.numpy() for v in run.model.trainable_variables]
            iterator = iter(strategy.distribute_datasets_from_function(
                lambda context: pipeline.train_batches(splits, 32, 1, 0, with_noise=mode == "pgd",
                                                       input_context=context)))
            run.train_step(iterator)
            return [v.numpy() - b for v, b in zip(run.model.trainable_variables, before)]
    finally:
        if per_replica_bn:
            models.build_resnet = original


def _relative(a, b):
    return max(np.linalg.norm(x - y) / max(np.linalg.norm(x), 1e-30) for x, y in zip(a, b))


@pytest.mark.parametrize("mode", ["standard", pytest.param("pgd", marks=pytest.mark.slow)])
def test_a_transfer_step_on_one_or_two_replicas_makes_the_same_update(source, mode):
    splits = bundled_cifar_splits()
    _, masks = source
    one = _one_step_update(tf.distribute.get_strategy(), source, masks, splits, mode)
    two = _one_step_update(mirrored_strategy(), source, masks, splits, mode)
    # float64: the same function up to the order of additions (measured ~1e-13).
    assert _relative(one, two) < 1e-9, _relative(one, two)
    # Per-replica BatchNorm statistics (each replica sees half the batch) change the update
    # by far more: the case synchronized BatchNorm exists for.
    unsynced = _one_step_update(mirrored_strategy(), source, masks, splits, mode,
                                per_replica_bn=True)
    assert _relative(one, unsynced) > 1e-3
