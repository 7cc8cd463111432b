"""Tests for dwlt_tf.attacks: CleverHans PGD / FGSM-RS with the reference presets."""
import gc
import weakref

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

from dwlt_tf import attacks, evaluate, models, pipeline, pruning_wrapper, train


@pytest.fixture
def trained(trained_resnet):
    return trained_resnet


def _batch(splits, n=100):
    batch = next(iter(pipeline.eval_batches(splits, "test", n, with_noise=True)))
    return batch["image"], batch["label"], batch["noise"]


def test_pgd_stays_in_the_ball_and_lowers_accuracy(trained):
    model, splits = trained
    images, labels, noise = _batch(splits, 200)
    adv = attacks.pgd_attack(model, images, labels, 8 / 255, 2 / 255, 10, noise=noise)
    assert float(tf.reduce_max(tf.abs(adv - images))) <= 8 / 255 + 1e-6
    assert float(tf.reduce_min(adv)) >= 0.0 and float(tf.reduce_max(adv)) <= 1.0

    def accuracy(x):
        return float(tf.reduce_mean(tf.cast(tf.argmax(model(x), 1) == labels, tf.float32)))
    clean, robust = accuracy(images), accuracy(adv)
    assert clean > 0.35, f"the fixture model did not learn (clean accuracy {clean})"
    assert robust < clean - 0.2, f"PGD barely hurt: clean {clean}, robust {robust}"


def test_equals_cleverhans_projected_gradient_descent_without_random_start(trained):
    model, splits = trained
    images, labels, _ = _batch(splits, 32)
    ours = attacks.pgd_attack(model, images, labels, 8 / 255, 2 / 255, 5, random_start=False)
    theirs = projected_gradient_descent(lambda x: model(x, training=False), images, 8 / 255,
                                        2 / 255, 5, np.inf, clip_min=0.0, clip_max=1.0,
                                        y=labels, rand_init=False)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-6)


def test_random_start_comes_from_the_given_noise(trained):
    model, splits = trained
    images, labels, noise = _batch(splits, 16)
    first = attacks.pgd_attack(model, images, labels, 8 / 255, 2 / 255, 3, noise=noise)
    again = attacks.pgd_attack(model, images, labels, 8 / 255, 2 / 255, 3, noise=noise)
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    other = attacks.pgd_attack(model, images, labels, 8 / 255, 2 / 255, 3, noise=-noise)
    assert not np.array_equal(first.numpy(), other.numpy())


def test_fgsm_rs_takes_a_step_larger_than_eps(trained):
    model, splits = trained
    images, labels, noise = _batch(splits, 16)
    fgsm = attacks.PRESETS["fgsm_rs"]
    assert fgsm.step_size == pytest.approx(1.25 * fgsm.eps) and fgsm.steps == 1
    adv = attacks.attack_batch(model, fgsm, images, labels, noise=noise)
    assert float(tf.reduce_max(tf.abs(adv - images))) <= fgsm.eps + 1e-6
    assert float(tf.reduce_mean(tf.abs(adv - images))) > 0.5 * fgsm.eps


def test_attack_changes_no_weights_masks_or_pruning_state(trained):
    model, splits = trained
    images, labels, noise = _batch(splits, 16)
    before = [v.numpy().copy() for v in model.variables]
    attacks.pgd_attack(model, images, labels, 8 / 255, 2 / 255, 3, noise=noise)
    for a, v in zip(before, model.variables):
        np.testing.assert_array_equal(a, v.numpy(), err_msg=v.name)
    # Training-mode attacks (the reference's) move only BatchNorm running statistics.
    attacks.pgd_attack(model, images, labels, 8 / 255, 2 / 255, 3, noise=noise, training=True)
    for a, v in zip(before, model.variables):
        if "moving_" in v.name:
            continue
        np.testing.assert_array_equal(a, v.numpy(), err_msg=v.name)
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before, model.variables)
               if "moving_mean" in v.name)
    for a, v in zip(before, model.variables):  # restore for the other tests
        v.assign(a)


def test_works_inside_tf_function(trained):
    model, splits = trained
    images, labels, noise = _batch(splits, 8)

    @tf.function
    def attack(x, y, n):
        return attacks.pgd_attack(model, x, y, 8 / 255, 2 / 255, 2, noise=n)
    np.testing.assert_allclose(
        attack(images, labels, noise).numpy(),
        attacks.pgd_attack(model, images, labels, 8 / 255, 2 / 255, 2, noise=noise).numpy(),
        atol=1e-6)


def test_evaluate_reports_sa_and_ra(trained):
    model, splits = trained
    acc = evaluate.evaluate(model, splits, "test", batch_size=125,
                            attack=attacks.Attack(8 / 255, 2 / 255, 5))
    assert acc.count == 500
    assert 0 <= acc.ra < acc.sa <= 100


@pytest.mark.parametrize("kwargs,match", [
    (dict(eps=1.5), r"attack.eps=1.5: must be a number in \[0.0, 1.0\]"),
    (dict(eps=-0.1), "attack.eps=-0.1"),
    (dict(step_size=0.0), r"attack.step_size=0.0: must be a number in \(0.0, inf\)"),
    (dict(steps=0), "attack.steps=0: must be a positive int"),
    (dict(steps=2.5), "attack.steps=2.5: must be a positive int"),
])
def test_bad_budgets_are_rejected(kwargs, match):
    budget = dict(eps=8 / 255, step_size=2 / 255, steps=3)
    budget.update(kwargs)
    with pytest.raises(ValueError, match=match):
        attacks.Attack(**budget)
    with pytest.raises(ValueError, match=match):
        attacks.pgd_attack(None, np.zeros((1, 32, 32, 3), np.float32), [0], **budget)


def test_presets_are_the_references():
    assert attacks.preset("pgd10_train") == attacks.Attack(8 / 255, 2 / 255, 10)
    assert attacks.preset("pgd20_eval") == attacks.Attack(8 / 255, 2 / 255, 20)
    assert attacks.preset("pgd3_imp") == attacks.Attack(8 / 255, 16 / (3 * 255), 3)
    with pytest.raises(ValueError, match="Unknown attack preset 'pgd7'"):
        attacks.preset("pgd7")


def test_attacked_models_are_freed():
    def attack_a_model():
        model = models.build_resnet("resnet18", 10, "cifar", base_width=4)
        images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[1, 2])
        attacks.pgd_attack(model, images, tf.constant([1, 2]), 8 / 255, 2 / 255, 2)
        assert model in attacks._COMPILED  # pylint: disable=protected-access
        return weakref.ref(model)
    model_ref = attack_a_model()
    gc.collect()
    assert model_ref() is None  # the compiled attack does not keep its model alive


# ------------------------------------------------------------- float16 attacks
def _confident_float16_copy(model, splits, scale=20.0):
    """(float32 model, float16 copy) whose classifier is scaled `scale`x: confident."""
    confident = tf_keras.models.clone_model(model)
    confident.set_weights(model.get_weights())
    fc = confident.get_layer("fc")
    kernel, bias = fc.get_weights()
    fc.set_weights([kernel * scale, bias * scale])
    with train.precision_policy("mixed_float16"):
        half = pruning_wrapper.wrap(models.build_resnet("resnet18", 5, "cifar",
                                                        *splits.spec.mean_std, base_width=8))
    half.set_weights(confident.get_weights())
    return confident, half


def _robust(model, images, labels, noise, **kwargs):
    adv = attacks.pgd_attack(model, images, labels, 8 / 255, 2 / 255, 20, noise=noise, **kwargs)
    return np.argmax(model(adv).numpy(), 1) == labels.numpy()


@pytest.mark.slow  # ~1 min: float16 PGD on CPU; the loss-scale unit tests stay
def test_float16_pgd_agrees_with_float32_on_a_confident_model(trained):
    model, splits = trained
    confident, half = _confident_float16_copy(model, splits)
    images, labels, noise = _batch(splits, 200)
    with tf.GradientTape() as tape:  # the failure mode: gradients that underflow
        tape.watch(images)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, half(images))
    grads = tape.gradient(loss, images).numpy().reshape(200, -1)
    all_zero = int(np.sum(np.all(grads == 0, axis=1)))
    assert all_zero >= 50, f"the fixture is not confident enough: {all_zero} zero gradients"

    full = _robust(confident, images, labels, noise)
    scaled = _robust(half, images, labels, noise, scale_loss=True)  # the engine's, float16
    unscaled = _robust(half, images, labels, noise, scale_loss=False)
    assert abs(scaled.mean() - full.mean()) <= 0.01, (scaled.mean(), full.mean())
    assert np.mean(scaled == full) >= 0.99
    # Without the scaling, float16 PGD stalls and overstates RA (what the fix prevents).
    assert unscaled.mean() >= full.mean() + 0.05, (unscaled.mean(), full.mean())


@pytest.mark.parametrize("training", [False, True])
def test_loss_scaling_leaves_float32_attacks_unchanged_where_nothing_underflows(trained,
                                                                              training):
    """Power-of-two scaling is exact in float32: the attack is the same except where the
    unscaled input gradient of a very confident example underflows to zero (a handful of
    pixels; a wrong or inexact scale would move most of them)."""
    model, splits = trained
    images, labels, noise = _batch(splits, 32)
    before = [v.numpy() for v in model.variables]
    plain = attacks.pgd_attack(model, images, labels, 8 / 255, 2 / 255, 3, noise=noise,
                               training=training, scale_loss=False)
    for value, v in zip(before, model.variables):
        v.assign(value)
    scaled = attacks.pgd_attack(model, images, labels, 8 / 255, 2 / 255, 3, noise=noise,
                                training=training, scale_loss=True)
    for value, v in zip(before, model.variables):
        v.assign(value)
    changed = np.mean(plain.numpy() != scaled.numpy())
    assert changed < 1e-4, f"{changed:.2%} of the pixels moved"
    np.testing.assert_array_equal(tf.argmax(model(plain), 1), tf.argmax(model(scaled), 1))


def test_loss_scale_is_an_exact_power_of_two():
    values = tf.constant([3e-9, 0.75, 1.0, 1.5, 65504.0, 0.0, np.inf], tf.float32)
    scale = attacks._power_of_two_at_or_below(values).numpy()  # pylint: disable=protected-access
    np.testing.assert_array_equal(scale, [2.0 ** -29, 0.5, 1.0, 1.0, 2.0 ** 15, 1.0, 1.0])


# ------------------------------------------------ attacks on a per-step weight snapshot
def _unsnapshotted_attack(model, training, steps):
    """The attack as it ran before kernel snapshots: the wrappers mask at every call."""
    @tf.function
    def attack(images, labels, noise):
        return attacks._pgd(lambda x: model(x, training=training),  # pylint: disable=protected-access
                            images, labels, 8 / 255, 2 / 255, steps, True, noise)
    return attack


@pytest.mark.parametrize("precision,training", [
    ("float32", True), ("mixed_bfloat16", False),
    pytest.param("float32", False, marks=pytest.mark.slow),
    pytest.param("mixed_bfloat16", True, marks=pytest.mark.slow)])
def test_snapshot_attack_is_bit_identical_to_masking_at_every_call(trained, precision,
                                                                   training):
    source, splits = trained
    with train.precision_policy(precision):
        model = pruning_wrapper.wrap(models.build_resnet("resnet18", 5, "cifar",
                                                         *splits.spec.mean_std, base_width=8))
    model.set_weights(source.get_weights())
    images, labels, noise = _batch(splits, 32)
    start = [v.numpy() for v in model.variables]
    reference = _unsnapshotted_attack(model, training, 4)(images, labels, noise)
    after_reference = [v.numpy() for v in model.variables]
    for value, v in zip(start, model.variables):
        v.assign(value)
    ours = attacks.pgd_attack(model, images, labels, 8 / 255, 2 / 255, 4, noise=noise,
                              training=training, snapshot=pruning_wrapper.kernel_snapshot)
    np.testing.assert_array_equal(reference.numpy(), ours.numpy())
    for value, v in zip(after_reference, model.variables):  # same BN statistics updates
        np.testing.assert_array_equal(value, v.numpy(), err_msg=v.name)


def test_snapshot_masks_each_kernel_once_per_attack(trained):
    model, splits = trained
    spec = tf.TensorSpec([None, 32, 32, 3], tf.float32)
    label_spec = tf.TensorSpec([None], tf.int64)

    def multiplies(fn):
        graph = tf.function(fn).get_concrete_function(spec, label_spec, spec).graph
        ops = [op for f in [graph] + [graph._functions[k].graph  # pylint: disable=protected-access
                                      for k in graph._functions] if hasattr(f, "get_operations")
               for op in f.get_operations()]
        return sum(op.type == "Mul" for op in ops)

    steps, wrapped = 5, len(pruning_wrapper.wrappers(model))
    before = multiplies(_unsnapshotted_attack(model, False, steps).python_function)
    after = multiplies(lambda x, y, n: attacks.pgd_attack(
        model, x, y, 8 / 255, 2 / 255, steps, noise=n, snapshot=pruning_wrapper.kernel_snapshot))
    # Before: every wrapper masked its kernel in each of the steps + 0 forward passes
    # whose gradient is taken; now once per attack.
    assert before - after >= wrapped * (steps - 1), (before, after, wrapped)
