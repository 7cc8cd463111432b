"""Tests for dwlt_tf.pruning (global masks) against torch.nn.utils.prune."""
import numpy as np
import pytest
import torch
from torch.nn.utils import prune

from dwlt_tf import pruning
from torch_resnet import ResNet

PAPER_SPARSITY = {6: 0.7379, 7: 0.7903, 8: 0.8322, 10: 0.8926, 11: 0.9141}


def _distinct_magnitudes(n, rng):
    """n distinct positive float32 values (consecutive bit patterns from 0.5), shuffled.

    Ties at the pruning threshold are broken arbitrarily by torch.topk, so exact
    agreement is only defined for distinct magnitudes.
    """
    bits = np.arange(0x3F000000, 0x3F000000 + n, dtype=np.int32)
    values = bits.view(np.float32)
    return values[rng.permutation(n)] * rng.choice(np.float32([-1, 1]), n)


@pytest.mark.slow  # ~1 min at ResNet-50 shapes; exact counts and ties stay tested
def test_matches_torch_global_unstructured_for_11_rounds_on_resnet50_shapes():
    convs = [(name, module) for name, module in ResNet("resnet50").named_modules()
             if isinstance(module, torch.nn.Conv2d)]
    assert len(convs) == 53
    total = sum(module.weight.numel() for _, module in convs)
    rng = np.random.default_rng(0)
    params = [(module, "weight") for _, module in convs]
    masks = None
    for k in range(1, 12):
        # "Training" between rounds: every weight gets a new value (pruned ones too,
        # as torch keeps updating weight_orig); the effective weight is orig * mask.
        values = _distinct_magnitudes(total, rng)
        offset = 0
        with torch.no_grad():
            for _, module in convs:
                target = module.weight_orig if hasattr(module, "weight_orig") else module.weight
                count = target.numel()
                target.copy_(torch.from_numpy(values[offset:offset + count]).view_as(target))
                offset += count
        kernels = {name: module.weight.detach().numpy().copy() for name, module in convs}
        masks = pruning.global_magnitude_masks(kernels, masks, 0.2)
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.2)
        mismatched = sum(int(np.count_nonzero((module.weight_mask.numpy() != 0) != masks[name]))
                         for name, module in convs)
        assert mismatched == 0, f"round {k}: {mismatched} entries differ from torch"
        zeros = sum(int(np.count_nonzero(~m)) for m in masks.values())
        assert zeros == pruning.imp_pruned_count(total, k)
        if k in PAPER_SPARSITY:
            assert round(zeros / total, 4) == PAPER_SPARSITY[k]


def test_pruned_entries_stay_pruned_and_count_uses_python_round():
    kernels = {"a": np.arange(1, 11, dtype=np.float32), "b": -np.arange(11, 16, dtype=np.float32)}
    masks = pruning.global_magnitude_masks(kernels, None, 0.5)  # round(7.5) == 8
    assert sum(int(np.count_nonzero(~m)) for m in masks.values()) == 8
    np.testing.assert_array_equal(masks["a"], [False] * 8 + [True] * 2)
    # Next round: even if the pruned weights grew large, they stay pruned.
    kernels["a"][:8] = 100.0
    masks2 = pruning.global_magnitude_masks(kernels, masks, 0.5)  # round(3.5) == 4
    assert not masks2["a"][:8].any()
    assert sum(int(np.count_nonzero(m)) for m in masks2.values()) == 3
    np.testing.assert_array_equal(masks2["b"], [False, False, True, True, True])


def test_ties_at_the_threshold_are_pruned_in_order():
    kernels = {"a": np.ones(6, np.float32), "b": np.ones(4, np.float32)}
    masks = pruning.global_magnitude_masks(kernels, None, 0.3)
    np.testing.assert_array_equal(masks["a"], [False, False, False, True, True, True])
    assert masks["b"].all()


@pytest.mark.parametrize("strategy", ["omp", "random"])
@pytest.mark.parametrize("target", [0.0, 0.5, 0.8926, 0.99])
def test_baselines_give_the_requested_sparsity(strategy, target):
    rng = np.random.default_rng(1)
    kernels = {f"conv{i}": rng.normal(size=shape).astype(np.float32)
               for i, shape in enumerate([(3, 3, 16, 32), (1, 1, 32, 64), (7, 7, 3, 16)])}
    total = sum(k.size for k in kernels.values())
    masks = pruning.prune_to_sparsity(strategy, kernels, target, seed=3)
    zeros = sum(int(np.count_nonzero(~m)) for m in masks.values())
    assert zeros == round(target * total)
    if strategy == "omp" and 0 < target:
        pruned = np.concatenate([np.abs(kernels[n])[~masks[n]] for n in kernels])
        kept = np.concatenate([np.abs(kernels[n])[masks[n]] for n in kernels])
        assert pruned.max() <= kept.min()
    if strategy == "random" and target == 0.5:
        other = pruning.prune_to_sparsity("random", kernels, target, seed=4)
        assert any((other[n] != masks[n]).any() for n in kernels)


def test_bad_arguments_are_named():
    kernels = {"a": np.ones((2, 2), np.float32)}
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\), got 1.2"):
        pruning.global_magnitude_masks(kernels, None, 1.2)
    with pytest.raises(ValueError, match="mask 'a' has shape"):
        pruning.global_magnitude_masks(kernels, {"a": np.ones(3)}, 0.2)
    with pytest.raises(ValueError, match="missing"):
        pruning.global_magnitude_masks(kernels, {"b": np.ones((2, 2))}, 0.2)
    with pytest.raises(ValueError, match="Unknown pruning strategy 'snip'"):
        pruning.prune_to_sparsity("snip", kernels, 0.5)


def test_imp_sparsity_formula():
    for k, expected in PAPER_SPARSITY.items():
        assert round(pruning.imp_sparsity(k), 4) == expected
