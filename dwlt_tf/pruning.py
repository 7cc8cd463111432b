"""Global unstructured pruning masks (pure NumPy): IMP rounds, OMP and random baselines.

Masks are computed over all prunable tensors together (conv1 and downsample convs
included), exactly as the reference does with
`torch.nn.utils.prune.global_unstructured(..., L1Unstructured, amount=0.2)` round after
round: each round removes round(fraction x currently unpruned) of the unpruned entries
with the smallest |w| and keeps pruned entries pruned, so round k has sparsity
1 - 0.8^k up to per-round rounding. Python's `round` (ties to even) is used because
torch uses it. Entries tied at the threshold are pruned in order of (tensor order,
flat index), which makes the result deterministic.

Strategies live in a small registry (`STRATEGIES`) so configs name them.
"""
from typing import Dict, Optional

import numpy as np

Masks = Dict[str, np.ndarray]


def _check_fraction(name, value, upper_inclusive=False):
    ok = 0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0
    if not ok:
        bound = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ValueError(f"{name} must be in {bound}, got {value!r}")


def _check_masks(kernels, masks):
    if masks is None:
        return {name: np.ones(np.shape(k), bool) for name, k in kernels.items()}
    if set(masks) != set(kernels):
        missing = sorted(set(kernels) - set(masks))
        extra = sorted(set(masks) - set(kernels))
        raise ValueError(f"masks and kernels name different tensors: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    for name, kernel in kernels.items():
        if np.shape(masks[name]) != np.shape(kernel):
            raise ValueError(f"mask {name!r} has shape {np.shape(masks[name])}, kernel has "
                             f"{np.shape(kernel)}")
    return {name: np.asarray(m) != 0 for name, m in masks.items()}


def _prune_smallest(scores, masks, count):
    """Prunes the `count` unpruned entries with the smallest scores (global)."""
    names = list(scores)
    if count <= 0:
        return {n: masks[n].copy() for n in names}
    alive = np.concatenate([scores[n][masks[n]] for n in names])
    if count >= alive.size:
        return {n: np.zeros_like(masks[n]) for n in names}
    threshold = np.partition(alive, count - 1)[count - 1]
    below = int(np.count_nonzero(alive < threshold))
    ties_to_prune = count - below
    result = {}
    for n in names:
        keep = masks[n] & (scores[n] > threshold)
        tied = masks[n] & (scores[n] == threshold)
        if ties_to_prune > 0 and tied.any():
            flat = np.flatnonzero(tied)
            drop = flat[:ties_to_prune]
            ties_to_prune -= drop.size
            tied_kept = tied.copy().reshape(-1)
            tied_kept[drop] = False
            keep |= tied_kept.reshape(tied.shape)
        elif tied.any():
            keep |= tied
        result[n] = keep
    return result


def global_magnitude_masks(kernels: Dict[str, np.ndarray], masks: Optional[Masks],
                           fraction: float) -> Masks:
    """One IMP round: prune `fraction` of the unpruned entries by global |w|.

    Args:
      kernels: name -> weight array (any layout; pruning is elementwise).
      masks: None (nothing pruned yet) or name -> 0/1 array of the kernel's shape.
      fraction: share of the currently unpruned entries to prune, in [0, 1).

    Returns:
      name -> bool array; pruned entries of `masks` stay pruned.
    """
    _check_fraction("fraction", fraction)
    masks = _check_masks(kernels, masks)
    alive = sum(int(np.count_nonzero(m)) for m in masks.values())
    count = round(fraction * alive)
    scores = {n: np.abs(np.asarray(k, np.float32)) for n, k in kernels.items()}
    return _prune_smallest(scores, masks, count)


def one_shot_magnitude_masks(kernels, sparsity):
    """OMP baseline: prune round(sparsity x total) smallest-|w| entries at once."""
    _check_fraction("sparsity", sparsity)
    masks = _check_masks(kernels, None)
    total = sum(m.size for m in masks.values())
    scores = {n: np.abs(np.asarray(k, np.float32)) for n, k in kernels.items()}
    return _prune_smallest(scores, masks, round(sparsity * total))


def random_masks(kernels, sparsity, seed=0):
    """Random-pruning baseline: round(sparsity x total) entries chosen uniformly, globally."""
    _check_fraction("sparsity", sparsity)
    rng = np.random.default_rng(seed)
    masks = _check_masks(kernels, None)
    total = sum(m.size for m in masks.values())
    scores = {n: rng.random(np.shape(k), dtype=np.float32) for n, k in kernels.items()}
    return _prune_smallest(scores, masks, round(sparsity * total))


def imp_pruned_count(total, rounds, fraction=0.2):
    """Number of pruned entries after `rounds` IMP rounds, with per-round rounding."""
    alive = total
    for _ in range(rounds):
        alive -= round(fraction * alive)
    return total - alive


def imp_sparsity(rounds, fraction=0.2, total=None):
    """Sparsity after `rounds` IMP rounds: 1 - (1 - fraction)^rounds, or exact for `total`."""
    if total is None:
        return 1.0 - (1.0 - fraction) ** rounds
    return imp_pruned_count(total, rounds, fraction) / total


# Pruning strategies by name, each (kernels, sparsity, seed) -> masks: the paper's
# baselines next to IMP (which prunes round by round with `global_magnitude_masks`).
STRATEGIES = {
    "omp": lambda kernels, target, seed=0: one_shot_magnitude_masks(kernels, target),
    "random": random_masks,
}


def prune_to_sparsity(strategy, kernels, target, seed=0):
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown pruning strategy {strategy!r}; choose one of "
                         f"{sorted(STRATEGIES)}")
    return STRATEGIES[strategy](kernels, target, seed)
