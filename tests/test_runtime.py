"""Tests for dwlt_tf.runtime: process settings, XLA opt-in giving the same numbers."""
import contextlib

import numpy as np
import pytest
import tensorflow as tf

from conftest import bundled_cifar_splits, pruned_resnet_fn
from dwlt_tf import attacks, pipeline, pruning_wrapper, runtime, train


@contextlib.contextmanager
def jit(enabled):
    previous = runtime.jit_compile()
    runtime.configure(jit_compile=enabled)
    try:
        yield
    finally:
        runtime.configure(jit_compile=previous)


@pytest.fixture(scope="module")
def splits():
    return bundled_cifar_splits()


def _model_fn(splits):
    return pruned_resnet_fn(splits, seed=3, sparsity=0.5)


def _one_step(splits, tmp_path, enabled, mode, precision, eval_attack=True):
    """(weight updates of one training step, its loss, test SA/RA of the initial weights)
    with or without XLA."""
    spec = train.TrainSpec(mode=mode, batch_size=32, lr=0.05, verbose=0, precision=precision,
                           attack=attacks.Attack(8 / 255, 2 / 255, 3) if mode == "pgd" else None,
                           eval_attack=attacks.Attack(8 / 255, 2 / 255, 5) if eval_attack else None)
    with jit(enabled), train.precision_policy(precision):
        run = train.TrainingRun(_model_fn(splits), splits, spec, str(tmp_path),
                                tf.distribute.get_strategy())
        accuracy = run.evaluator(splits, "test", 100)
        before = [v.numpy() for v in run.model.trainable_variables]
        iterator = iter(pipeline.train_batches(splits, 32, 0, 0, with_noise=mode == "pgd"))
        loss = run.train_step(iterator).numpy()[0]
        updates = [v.numpy() - b for v, b in zip(run.model.trainable_variables, before)]
        for wrapper in pruning_wrapper.wrappers(run.model).values():  # masks still hold
            assert np.all(wrapper.kernel.numpy()[wrapper.mask.numpy() == 0] == 0)
    return updates, loss, accuracy


def _relative_difference(updates, other):
    return max(np.linalg.norm(a - b) / np.linalg.norm(a) for a, b in zip(updates, other)
               if np.linalg.norm(a) > 0)


@pytest.mark.parametrize("mode", ["standard", pytest.param("pgd", marks=pytest.mark.slow)])
def test_xla_computes_the_same_training_step(splits, tmp_path, mode):
    # float64 shows XLA computes the same function: the updates agree to ~1e-8.
    updates, loss, accuracy = _one_step(splits, tmp_path / "plain", False, mode, "float64",
                                        eval_attack=False)
    updates_xla, loss_xla, accuracy_xla = _one_step(splits, tmp_path / "xla", True, mode,
                                                    "float64", eval_attack=False)
    assert loss_xla == pytest.approx(loss, rel=1e-6)
    assert _relative_difference(updates, updates_xla) < 1e-5
    assert accuracy_xla.sa == accuracy.sa


@pytest.mark.slow  # the float64 test above shows the same function; this states float32's gap
def test_xla_float32_step_agrees_up_to_rounding(splits, tmp_path):
    updates, loss, accuracy = _one_step(splits, tmp_path / "plain", False, "standard", "float32")
    updates_xla, loss_xla, accuracy_xla = _one_step(splits, tmp_path / "xla", True, "standard",
                                                    "float32")
    # float32: XLA's kernels round differently from oneDNN's; BatchNorm's batch-statistic
    # gradients amplify it to ~0.5 % of an update (measured 0.4 %).
    assert loss_xla == pytest.approx(loss, rel=1e-5)
    assert _relative_difference(updates, updates_xla) < 2e-2
    assert accuracy_xla.sa == accuracy.sa
    # PGD takes the sign of gradients: rounding flips near-zero components.
    assert abs(accuracy_xla.ra - accuracy.ra) <= 2.0, (accuracy_xla.ra, accuracy.ra)


def test_eager_attacks_compile_with_xla_when_asked(splits):
    model = _model_fn(splits)()
    batch = next(iter(pipeline.eval_batches(splits, "test", 16, with_noise=True)))
    args = (batch["image"], batch["label"], 8 / 255, 2 / 255, 3)
    plain = attacks.pgd_attack(model, *args, noise=batch["noise"])
    with jit(True):
        compiled = attacks.pgd_attack(model, *args, noise=batch["noise"])
    keys = [key for key in attacks._COMPILED[model]]  # pylint: disable=protected-access
    assert {key[-1] for key in keys} == {False, True}  # one XLA, one plain function
    assert np.mean(np.abs(compiled.numpy() - plain.numpy()) < 1e-6) > 0.99


@pytest.mark.parametrize("kwargs,match", [
    (dict(jit_compile="yes"), "runtime.jit_compile='yes': must be True or False"),
    (dict(intra_op_threads=-1), "runtime.intra_op_threads=-1: must be an int >= 0"),
])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        runtime.configure(**kwargs)


def test_jit_compile_is_a_config_setting(tmp_path):
    from dwlt_tf import cli  # pylint: disable=import-outside-toplevel
    from conftest import load_config
    config = load_config("transfer", "local")
    assert config.runtime.jit_compile is False
    config.runtime.jit_compile = True
    try:
        cli.setup(config)
        assert runtime.jit_compile() is True
    finally:
        runtime.configure(jit_compile=False)
