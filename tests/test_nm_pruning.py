"""Tests for N:M (2:4) structured pruning: masks, the pattern's settings, the one-shot
baseline and the export's pattern check (IMP descending to 2:4: test_pruning_wrapper.py)."""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from conftest import REPO
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_utils

from dwlt_tf import errors, export, imp, models, pruning, pruning_wrapper, tickets

SHAPES = {  # (arch, stem, base width): the ResNets a study prunes
    "resnet18": ("resnet18", "cifar", 8),
    "resnet50": ("resnet50", "imagenet", 64),
}


def _kernels(arch, stem, width, seed=0):
    tf_keras.utils.set_random_seed(seed)
    model = pruning_wrapper.wrap(models.build_resnet(arch, 10, stem, base_width=width))
    return pruning_wrapper.get_kernels(model)


def _per_group(mask, m=4):
    """Non-zeros of every group of m consecutive input channels (axis -2)."""
    moved = np.moveaxis(mask, -2, -1)
    return moved.reshape(-1, m).sum(axis=1)


@pytest.mark.parametrize("shapes", sorted(SHAPES))
def test_2by4_masks_keep_exactly_2_of_every_4_input_channels(shapes):
    kernels = _kernels(*SHAPES[shapes])
    masks = pruning.nm_masks(kernels, 2, 4)
    dense = pruning.nm_dense_layers(kernels, 4)
    assert dense == ["conv1"]  # the stem: 3 input channels, no groups of 4
    assert masks["conv1"].all()
    for name, mask in masks.items():
        if name in dense:
            continue
        counts = _per_group(mask)
        assert (counts == 2).all(), name
        # The kept two are the two largest |w| of their group.
        groups = np.moveaxis(np.abs(kernels[name]), -2, -1).reshape(-1, 4)
        kept = np.moveaxis(mask, -2, -1).reshape(-1, 4)
        assert (groups[kept].reshape(-1, 2).min(axis=1)
                >= groups[~kept].reshape(-1, 2).max(axis=1)).all(), name
    assert not pruning.nm_violations(masks, 2, 4)
    eligible = sum(k.size for n, k in kernels.items() if n not in dense)
    assert tickets.sparsity(masks) == pytest.approx(
        0.5 * eligible / sum(k.size for k in kernels.values()), abs=1e-12)


def test_masks_are_tfmot_m_by_n_masks():
    """Our grouping and choice are TF-MOT's `sparsity_m_by_n` ones (its (2, 4) means 2
    zeros of every 4, i.e. 2:4 here), and TF-MOT's own check accepts them."""
    kernels = _kernels("resnet18", "cifar", 8, seed=3)
    masks = pruning.nm_masks(kernels, 2, 4)
    for name in ("layer1.0.conv1", "layer3.0.downsample.0", "layer4.1.conv2"):
        weights = tf.constant(kernels[name])
        theirs = pruning_utils.m_by_n_sparsity_mask_prepare(
            pruning_utils.generate_m_by_n_mask(pruning_utils.weights_rearrange(weights),
                                               (2, 4)), weights.shape).numpy() != 0
        np.testing.assert_array_equal(masks[name], theirs, err_msg=name)
        assert pruning_utils.is_pruned_m_by_n(tf.constant(kernels[name] * masks[name]),
                                              (2, 4))
        assert not pruning_utils.is_pruned_m_by_n(weights, (2, 4))


def test_descent_keeps_pruned_entries_pruned_and_breaks_ties_by_channel():
    kernel = np.array([4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0], np.float32).reshape(1, 1, 8, 1)
    three = pruning.nm_masks({"k": kernel}, 3, 4)["k"].reshape(-1)
    assert three.tolist() == [1, 1, 1, 0, 1, 1, 1, 0]
    # Pruned entries stay pruned even when the weights there grew back.
    trained = kernel.copy().reshape(-1)
    trained[3] = 100.0
    two = pruning.nm_masks({"k": trained.reshape(kernel.shape)}, 2, 4,
                           {"k": three.reshape(kernel.shape)})["k"].reshape(-1)
    assert two.tolist() == [1, 1, 0, 0, 1, 1, 0, 0]
    with pytest.raises(ValueError, match=r"kernel 'k': 2 groups of 4 have fewer than 3"):
        pruning.nm_masks({"k": kernel}, 3, 4, {"k": two.reshape(kernel.shape)})


def test_violations_name_the_kernel_and_count_groups():
    kernel = np.ones((3, 3, 8, 2), np.float32)
    masks = pruning.nm_masks({"k": kernel}, 2, 4)
    assert pruning.nm_violations({"k": kernel * masks["k"]}, 2, 4) == {}
    broken = kernel * masks["k"]
    broken[0, 0, :, 0] = 1.0  # two groups of 4 fully dense again
    assert pruning.nm_violations({"k": broken}, 2, 4) == {"k": 2}


@pytest.mark.parametrize("pattern, match", [
    ("2by4", "'N:M' with 0 < N < M"), ("4:2", "'N:M' with 0 < N < M"),
    ("0:4", "'N:M' with 0 < N < M"), ("dense", "'N:M' with 0 < N < M")])
def test_bad_patterns_are_named(pattern, match):
    with pytest.raises(errors.ConfigError, match=f"imp.pattern={pattern!r}: give .*{match}"):
        imp.ImpSpec(pattern=pattern)


def test_more_rounds_than_the_pattern_allows_are_refused():
    assert imp.ImpSpec(pattern="2:4", rounds=2).nm == (2, 4)
    with pytest.raises(errors.ConfigError, match=r"imp.rounds=3: a 2:4 pattern is reached "
                                                 r"after 2 rounds"):
        imp.ImpSpec(pattern="2:4", rounds=3)


def test_one_shot_2by4_baseline_ticket(tmp_path):
    tf_keras.utils.set_random_seed(2)
    model = models.build_resnet("resnet18", 5, "cifar", base_width=8)
    path = imp.baseline_ticket(lambda: model, "omp_2by4", str(tmp_path / "t"))
    masks, meta = tickets.load(path)
    assert meta["pattern"] == "2:4" and meta["method"] == "omp_2by4"
    assert not pruning.nm_violations(masks, 2, 4)
    assert meta["pruned"] == sum(int(m.size - m.sum()) for m in masks.values())
    with pytest.raises(ValueError, match="omp_2by4 prunes to its 2:4 pattern"):
        imp.baseline_ticket(lambda: model, "omp_2by4", str(tmp_path / "u"), sparsity=0.5)


def test_export_check_names_a_kernel_that_breaks_the_pattern():
    kernel = np.ones((3, 3, 8, 4), np.float32)
    masks = pruning.nm_masks({"k": kernel}, 2, 4)
    good = [tf.Variable(kernel * masks["k"], name="conv/kernel"),
            tf.Variable(np.ones((3, 3, 3, 4), np.float32), name="stem/kernel")]
    report = export.check_pattern(good, "2:4")
    assert report["kernels_checked"] == 1 and report["kernels_dense"] == ["stem/kernel:0"]
    bad = [tf.Variable(kernel, name="conv/kernel")]
    with pytest.raises(export.ExportError, match=r"recorded as 2:4.*conv/kernel:0 \(72 groups\)"):
        export.check_pattern(bad, "2:4")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                    reason="TensorRT installed: the benchmark would run")
def test_gpu_benchmark_without_tensorrt_stops_with_one_line():
    out = subprocess.run([sys.executable, "benchmarks/sparse_inference.py", "--device=cuda"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and not out.stdout
    assert out.stderr.strip().splitlines() == [
        "sparse_inference: --device=cuda needs TensorRT's Python package (pip install "
        "tensorrt) and a GPU; neither is used on CPU"]
