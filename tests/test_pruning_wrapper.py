"""Tests for dwlt_tf.pruning_wrapper and dwlt_tf.imp: TF-MOT wrappers driven by global masks,
IMP with rewinding (unstructured and descending to 2:4)."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from conftest import mirrored_strategy
from tensorflow_model_optimization.python.core.sparsity.keras import (
    pruning_wrapper as tfmot_pruning_wrapper)

from dwlt_tf import attacks, data, imp, models, pruning, pruning_wrapper, tickets, train

STRATEGIES = {
    "default": tf.distribute.get_strategy,
    "mirrored": mirrored_strategy,
}


def _tiny(num_classes=5, seed=0):
    tf_keras.utils.set_random_seed(seed)
    return models.build_resnet("resnet18", num_classes, "cifar", base_width=8)


def _half_pruned(seed=0):
    model = pruning_wrapper.wrap(_tiny(seed=seed))
    masks = pruning.global_magnitude_masks(pruning_wrapper.get_kernels(model), None, 0.5)
    pruning_wrapper.set_masks(model, masks)
    return model, masks


@pytest.fixture(scope="module")
def tiny_splits():
    root = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "cifar10_jpeg_small")
    return data.load(data.DataSpec("imagefolder", path=root, image_size=32, augment="cifar",
                                   stats="cifar10", classes=(0, 1, 2, 3, 4), data_rate=0.15))


def test_wrap_shares_weights_and_wraps_every_conv():
    plain = _tiny()
    wrapped = pruning_wrapper.wrap(plain)
    layers = pruning_wrapper.wrappers(wrapped)
    assert set(layers) == set(models.conv_layer_names(plain))
    assert len(layers) == 20  # ResNet-18: conv1, 16 block convs, 3 downsamples
    assert all(isinstance(w, tfmot_pruning_wrapper.PruneLowMagnitude) for w in layers.values())
    assert layers["conv1"].kernel is plain.get_layer("conv1").kernel
    with_fc = pruning_wrapper.wrap(_tiny(), prunable=("conv", "dense"))
    assert "fc" in pruning_wrapper.wrappers(with_fc)
    with pytest.raises(ValueError, match="already wrapped"):
        pruning_wrapper.wrap(wrapped)
    with pytest.raises(ValueError, match="prunable must name"):
        pruning_wrapper.wrap(_tiny(), prunable=("bn",))


def test_set_masks_zeroes_kernels_and_validates():
    model, masks = _half_pruned()
    assert pruning_wrapper.model_sparsity(model) == pytest.approx(tickets.sparsity(masks))
    for name, wrapper in pruning_wrapper.wrappers(model).items():
        assert not np.any(wrapper.kernel.numpy()[~masks[name]])
    bad = dict(masks)
    bad["conv1"] = np.ones((3, 3, 3, 9), bool)
    with pytest.raises(ValueError, match="Mask 'conv1' has shape"):
        pruning_wrapper.set_masks(model, bad)
    with pytest.raises(ValueError, match="missing \\['conv1'\\]"):
        pruning_wrapper.set_masks(model, {k: v for k, v in masks.items() if k != "conv1"})


def test_forward_pass_applies_the_mask_functionally():
    model, masks = _half_pruned()
    x = np.random.RandomState(0).rand(2, 32, 32, 3).astype("float32")
    before = model(x, training=False).numpy()
    wrapper = pruning_wrapper.wrappers(model)["layer1.0.conv1"]
    kernel = wrapper.kernel.numpy()
    kernel[~masks["layer1.0.conv1"]] = 5.0  # someone writes into pruned entries
    wrapper.kernel.assign(kernel)
    np.testing.assert_allclose(model(x, training=False).numpy(), before, rtol=1e-5, atol=1e-6)
    pruning_wrapper.apply_masks(model)
    assert not np.any(wrapper.kernel.numpy()[~masks["layer1.0.conv1"]])


@pytest.mark.parametrize("strategy_name", sorted(STRATEGIES))
@pytest.mark.parametrize("mode", ["standard", "pgd"])
def test_masks_stay_zero_through_training(tmp_path, tiny_splits, strategy_name, mode):
    strategy = STRATEGIES[strategy_name]()
    captured = {}

    def model_fn():
        model, masks = _half_pruned(seed=1)
        captured["masks"] = masks
        return model

    spec = train.TrainSpec(mode=mode, epochs=1, batch_size=32, lr=0.1, weight_decay=5e-4,
                           attack=attacks.Attack(8 / 255, 2 / 255, 2) if mode == "pgd" else None,
                           eval_attack=attacks.Attack(8 / 255, 2 / 255, 2), test=False,
                           verbose=0)
    result = train.fit(model_fn, tiny_splits, spec, str(tmp_path), strategy)
    model, masks = result.model, captured["masks"]
    changed = 0
    for name, wrapper in pruning_wrapper.wrappers(model).items():
        kernel = wrapper.kernel.numpy()
        assert not np.any(kernel[~masks[name]]), f"{name}: pruned weights became non-zero"
        np.testing.assert_array_equal(wrapper.mask.numpy() != 0, masks[name])
        assert int(wrapper.pruning_step.numpy()) == -1  # TF-MOT's own step never advanced
        changed += int(np.count_nonzero(kernel[masks[name]]))
    assert changed > 0
    assert result.sparsity == pytest.approx(tickets.sparsity(masks))


def test_pgd_inside_strategy_run_on_wrapped_model():
    # The known trap: TF-MOT's wrapper calls merge_call inside CleverHans's nested
    # tf.function under strategy.run. GlobalMaskWrapper must not.
    strategy = STRATEGIES["mirrored"]()
    with strategy.scope():
        model, masks = _half_pruned()
    x = tf.random.stateless_uniform((8, 32, 32, 3), (1, 2))
    y = tf.constant([0, 1, 2, 3, 4, 0, 1, 2], tf.int64)

    @tf.function
    def step(x, y):
        return strategy.run(lambda a, b: attacks.pgd_attack(model, a, b, 8 / 255, 2 / 255, 3,
                                                            training=True), args=(x, y))
    adv = strategy.experimental_local_results(step(x, y))
    assert len(adv) == 2  # each replica attacked the (whole, unsplit) batch
    for a in adv:
        assert a.shape == (8, 32, 32, 3)
        assert float(tf.reduce_max(tf.abs(a - x))) <= 8 / 255 + 1e-6
    for name, wrapper in pruning_wrapper.wrappers(model).items():
        assert int(wrapper.pruning_step.numpy()) == -1
        np.testing.assert_array_equal(wrapper.mask.numpy() != 0, masks[name])


@pytest.mark.parametrize("fmt", ["h5", "tf"])
def test_wrapped_model_saves_and_reloads_without_custom_objects(tmp_path, fmt):
    model, masks = _half_pruned()
    path = str(tmp_path / ("model.h5" if fmt == "h5" else "saved"))
    model.save(path, save_format=fmt)
    loaded = tf_keras.models.load_model(path)  # no custom_objects, no prune_scope
    layers = pruning_wrapper.wrappers(loaded)
    assert isinstance(layers["conv1"], pruning_wrapper.GlobalMaskWrapper)
    schedule = layers["conv1"].pruning_schedule
    assert isinstance(schedule, pruning_wrapper.GlobalMaskSchedule)
    assert schedule.sparsity == pytest.approx(tickets.sparsity(masks))
    for name, wrapper in layers.items():
        np.testing.assert_array_equal(wrapper.mask.numpy() != 0, masks[name])
    x = np.random.RandomState(1).rand(2, 32, 32, 3).astype("float32")
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_strip_pruning_keeps_the_zeros_and_the_function():
    model, masks = _half_pruned()
    plain = pruning_wrapper.strip(model)
    assert not pruning_wrapper.wrappers(plain)
    for name in masks:
        kernel = plain.get_layer(name).kernel.numpy()
        np.testing.assert_array_equal(kernel != 0, masks[name] & (kernel != 0))
        assert not np.any(kernel[~masks[name]])
    x = np.random.RandomState(2).rand(2, 32, 32, 3).astype("float32")
    np.testing.assert_allclose(plain(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)


IMP_ROUND = train.TrainSpec(epochs=1, batch_size=64, lr=0.05, eval_attack=None, test=False,
                            verbose=0)


def _imp_run(workdir, splits, imp_spec, seed):
    """(theta0, its builder, ticket paths) of an IMP run from a tiny random theta0."""
    theta0 = _tiny(seed=seed)
    weights = theta0.get_weights()

    def pretrained_fn():
        model = models.build_resnet("resnet18", 5, "cifar", base_width=8)
        model.set_weights(weights)
        return model
    paths = imp.run(pretrained_fn, splits, IMP_ROUND, imp_spec, str(workdir),
                    meta={"source_sha256": "abc"}, pretrained={"sha256": "abc"})
    return theta0, pretrained_fn, paths


def test_imp_rewinds_to_theta0_and_reaches_exact_sparsities(tmp_path, tiny_splits):
    theta0, pretrained_fn, paths = _imp_run(tmp_path, tiny_splits, imp.ImpSpec(rounds=3), 7)
    total = sum(int(np.prod(layer.kernel.shape)) for layer in theta0.layers
                if isinstance(layer, tf_keras.layers.Conv2D))
    for k, path in enumerate(paths, start=1):
        masks, meta = tickets.load(path)
        assert meta["round"] == k and meta["source_sha256"] == "abc"
        zeros = sum(int(np.count_nonzero(~m)) for m in masks.values())
        assert zeros == pruning.imp_pruned_count(total, k)
    # Round 3's ticket came from trained weights, not from theta0's magnitudes.
    masks3, _ = tickets.load(paths[2])
    masks2, _ = tickets.load(paths[1])
    from_theta0 = pruning.global_magnitude_masks(
        {n: theta0.get_layer(n).kernel.numpy() for n in masks2}, masks2, 0.2)
    assert any((from_theta0[n] != masks3[n]).any() for n in masks3)
    # Rewinding: every unpruned weight is exactly theta0, BatchNorm included.
    rewound = imp.masked_model(pretrained_fn, masks3)
    for name, wrapper in pruning_wrapper.wrappers(rewound).items():
        expected = theta0.get_layer(name).kernel.numpy() * masks3[name]
        np.testing.assert_array_equal(wrapper.kernel.numpy(), expected)
    np.testing.assert_array_equal(rewound.get_layer("layer2.0.bn1").moving_variance.numpy(),
                                  theta0.get_layer("layer2.0.bn1").moving_variance.numpy())
    # A second call finds every ticket and trains nothing.
    mtimes = [os.path.getmtime(os.path.join(p, tickets.META_FILE)) for p in paths]
    assert imp.run(pretrained_fn, tiny_splits, IMP_ROUND, imp.ImpSpec(rounds=3),
                   str(tmp_path), pretrained={"sha256": "abc"}) == paths
    assert mtimes == [os.path.getmtime(os.path.join(p, tickets.META_FILE)) for p in paths]


def _per_group(mask, m=4):
    """Non-zeros of every group of m consecutive input channels (axis -2)."""
    return np.moveaxis(mask, -2, -1).reshape(-1, m).sum(axis=1)


def test_2by4_imp_descends_3by4_then_2by4_on_trained_weights_with_rewinding(tmp_path,
                                                                           tiny_splits):
    _, pretrained_fn, paths = _imp_run(tmp_path, tiny_splits,
                                       imp.ImpSpec(pattern="2:4", rounds=2), 5)
    theta0 = pruning_wrapper.get_kernels(pruning_wrapper.wrap(pretrained_fn()))
    previous = None
    for k, path in enumerate(paths, start=1):
        masks, meta = tickets.load(path)
        assert meta["pattern"] == f"{4 - k}:4" and meta["target_pattern"] == "2:4"
        assert masks["conv1"].all()  # the stem: 3 input channels, no groups of 4
        for name, mask in masks.items():
            if name != "conv1":
                assert (_per_group(mask) == 4 - k).all(), (k, name)
            if previous is not None:
                assert not (mask & ~previous[name]).any(), name  # pruned stay pruned
        previous = masks
    # Round 1 is cut from theta0; round 2 from the weights trained under round 1's mask,
    # so it is not one-shot 2:4 pruning of theta0 (the omp_2by4 baseline).
    first, _ = tickets.load(paths[0])
    np.testing.assert_array_equal(first["layer2.0.conv1"],
                                  pruning.nm_masks(theta0, 3, 4)["layer2.0.conv1"])
    last, _ = tickets.load(paths[1])
    one_shot = pruning.one_shot_nm_masks(theta0, (2, 4))
    assert any((one_shot[n] != last[n]).any() for n in last)
    # Rewinding restores theta0 exactly under the 2:4 mask.
    rewound = imp.masked_model(pretrained_fn, last)
    for name, wrapper in pruning_wrapper.wrappers(rewound).items():
        np.testing.assert_array_equal(wrapper.kernel.numpy(), theta0[name] * last[name])
