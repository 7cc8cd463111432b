"""Global unstructured pruning masks (pure NumPy): IMP rounds, OMP and random baselines.

Masks are computed over all prunable tensors together (conv1 and downsample convs
included), exactly as the reference does with
`torch.nn.utils.prune.global_unstructured(..., L1Unstructured, amount=0.2)` round after
round: each round removes round(fraction x currently unpruned) of the unpruned entries
with the smallest |w| and keeps pruned entries pruned, so round k has sparsity
1 - 0.8^k up to per-round rounding. Python's `round` (ties to even) is used because
torch uses it. Entries tied at the threshold are pruned in order of (tensor order,
flat index), which makes the result deterministic.

N:M masks (`nm_masks`) keep the N largest-magnitude weights of every group of M
consecutive input channels -- the 2:4 pattern the sparse tensor cores of Ampere and
later GPUs run (through TensorRT / cuSPARSELt). Groups run along the kernel's axis -2,
the input-channel axis of both Keras Conv2D kernels (kh, kw, cin, cout) and Dense
kernels (cin, cout), at fixed (kh, kw, cout): the grouping of TF-MOT's
`sparsity_m_by_n` (`pruning_utils.weights_rearrange`), which the tests check against.
A kernel whose input channels are not a multiple of M (the stem conv, 3 channels) has
no such groups and stays dense: TensorRT runs it densely anyway.

Strategies live in a small registry (`STRATEGIES`) so configs name them; the pruning
methods a study can compare (`METHODS`) say which are iterative and which pattern
their tickets have.
"""
import dataclasses
from typing import Dict, Optional, Tuple

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


# ------------------------------------------------------------------- N:M pattern

UNSTRUCTURED = "unstructured"
# Where N:M groups run, as recorded in tickets and exports.
NM_AXIS = ("input channels: axis 2 of Keras Conv2D kernels (kh, kw, cin, cout), axis 0 of "
           "Dense kernels; in PyTorch / ONNX layout (cout, cin, kh, kw), axis 1")


def parse_pattern(value, where="pattern") -> Optional[Tuple[int, int]]:
    """"unstructured" -> None; "N:M" (e.g. "2:4": N of every M kept) -> (N, M)."""
    if value == UNSTRUCTURED:
        return None
    parts = value.split(":") if isinstance(value, str) else []
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        n, m = int(parts[0]), int(parts[1])
        if 0 < n < m:
            return n, m
    raise ValueError(f"{where}={value!r}: give {UNSTRUCTURED!r} or 'N:M' with 0 < N < M "
                     "(e.g. '2:4': 2 of every 4 consecutive input-channel weights kept)")


def pattern_name(pattern: Optional[Tuple[int, int]]) -> str:
    return UNSTRUCTURED if pattern is None else f"{pattern[0]}:{pattern[1]}"


def nm_eligible(shape, m) -> bool:
    """Whether a kernel of `shape` has groups of `m` input channels (axis -2)."""
    return len(shape) >= 2 and shape[-2] % m == 0


def _groups(array, m):
    """View of `array` (..., cin, cout) as (groups, m): consecutive input channels."""
    moved = np.moveaxis(np.asarray(array), -2, -1)  # (..., cout, cin)
    return moved.reshape(-1, m)


def _ungroup(groups, shape):
    moved_shape = tuple(shape[:-2]) + (shape[-1], shape[-2])
    return np.moveaxis(groups.reshape(moved_shape), -1, -2)


def nm_masks(kernels: Dict[str, np.ndarray], n: int, m: int,
             masks: Optional[Masks] = None) -> Masks:
    """Keeps the `n` largest |w| among the unpruned entries of every group of `m`
    consecutive input channels; kernels without such groups keep their mask.

    Ties go to the lower input channel (as `tf.math.top_k`). Pruned entries of `masks`
    stay pruned, so every group needs at least `n` unpruned entries.
    """
    if not 0 < n < m:
        raise ValueError(f"N:M pattern {n}:{m}: needs 0 < N < M")
    masks = _check_masks(kernels, masks)
    out = {}
    for name, kernel in kernels.items():
        mask = masks[name]
        if not nm_eligible(np.shape(kernel), m):
            out[name] = mask.copy()
            continue
        alive = _groups(mask, m)
        short = int(np.count_nonzero(alive.sum(axis=1) < n))
        if short:
            raise ValueError(f"kernel {name!r}: {short} groups of {m} have fewer than {n} "
                             "unpruned weights; an N:M mask cannot be cut from this mask")
        scores = np.where(alive, np.abs(_groups(kernel, m).astype(np.float32)), -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
        keep = np.zeros_like(alive)
        np.put_along_axis(keep, order, True, axis=1)
        out[name] = _ungroup(keep, np.shape(kernel))
    return out


def nm_violations(arrays: Dict[str, np.ndarray], n: int, m: int) -> Dict[str, int]:
    """{name: number of groups of `m` with more than `n` non-zeros} for every kernel
    with groups (others are listed by `nm_dense_layers`); empty: all satisfy N:M."""
    out = {}
    for name, array in arrays.items():
        if nm_eligible(np.shape(array), m):
            bad = int(np.count_nonzero((_groups(np.asarray(array) != 0, m)).sum(axis=1) > n))
            if bad:
                out[name] = bad
    return out


def nm_dense_layers(arrays: Dict[str, np.ndarray], m: int):
    """Names of the kernels an N:M pattern leaves dense (input channels not a multiple
    of `m`)."""
    return sorted(name for name, a in arrays.items() if not nm_eligible(np.shape(a), m))


# ----------------------------------------------------------------------- methods

@dataclasses.dataclass(frozen=True)
class Method:
    """A pruning method a study compares: how its tickets are found and their pattern."""
    name: str
    iterative: bool                 # IMP with rewinding (else one-shot from theta0)
    pattern: str = UNSTRUCTURED     # "unstructured" or "N:M" of the method's tickets
    versus: Optional[str] = None    # the IMP method a one-shot baseline is measured against

    @property
    def nm(self) -> Optional[Tuple[int, int]]:
        return parse_pattern(self.pattern)


METHODS = {method.name: method for method in (
    Method("imp", True),
    Method("omp", False, versus="imp"),
    Method("random", False, versus="imp"),
    # 2:4 (50 % of every N:M-eligible kernel by construction): IMP descends one weight
    # per group per round (4:4 -> 3:4 -> 2:4), OMP cuts 2:4 from theta0 at once.
    Method("imp_2by4", True, "2:4"),
    Method("omp_2by4", False, "2:4", versus="imp_2by4"),
)}


def one_shot_nm_masks(kernels, pattern):
    """The N:M one-shot baseline: `nm_masks` of the pre-trained weights."""
    n, m = pattern
    return nm_masks(kernels, n, m)
