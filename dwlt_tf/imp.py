"""Iterative magnitude pruning with rewinding to the pre-trained weights (IMP).

As the reference (`main_std.py` / `main_adv.py`, `pruning_with_rewind`) does it:

1. ticket 1 = prune 20 % of all conv weights, globally by |w|, straight from the
   pre-trained weights theta0, before any training;
2. for k = 1, 2, ...: rewind every weight to theta0 (BatchNorm included) keeping ticket
   k's mask, train on the pre-training task (standard, or adversarial with PGD-3) for
   the configured epochs with a fresh optimizer, prune 20 % of the surviving weights
   of the trained network -> ticket k + 1.

Ticket k therefore has sparsity 1 - 0.8^k (up to per-round rounding).

With an N:M pattern (`pattern="2:4"`), the same loop prunes one weight per group of M
consecutive input channels per round instead of 20 % globally: ticket k keeps exactly
M - k of every M (4:4 -> 3:4 -> 2:4), the last round's ticket is N:M, and every round
after the first picks its survivors on the weights trained under the previous mask,
which is what distinguishes it from one-shot N:M pruning of theta0 (`omp_2by4`).
Kernels without groups of M input channels (the stem conv) stay dense. Each ticket is
saved as soon as it exists (`tickets.save`) with its round, sparsity (overall and per
layer), the source weights' sha256 and the configuration; each round's training runs in
its own resumable workdir, so an interrupted IMP run continues where it stopped and
never recomputes a finished round.

The IMP workdir belongs to one identity (`run_identity`: the pre-trained weights, the
data, the round training and the pruning settings); another identity is refused before
any work (`identity.claim`). `rounds` is not part of it: ticket k does not depend on
how many rounds follow, so raising `rounds` continues a finished run.
"""
import dataclasses
import os
from typing import Callable, List, Optional

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tf_keras

from dwlt_tf import checks, errors, identity, pruning, pruning_wrapper, runtime, tickets, train


@dataclasses.dataclass(frozen=True)
class ImpSpec:
    """How many tickets to find and how fast to prune."""
    # Tickets 1..rounds (the paper goes to 1 - 0.8^19); neutral: more rounds continue a run.
    rounds: int = identity.neutral(11)
    fraction: float = 0.2            # of the surviving weights, per round
    prunable: tuple = ("conv",)      # the reference prunes every Conv2d, fc stays dense
    # "unstructured" (the paper's) or "N:M": rounds then descend to N of every M.
    pattern: str = pruning.UNSTRUCTURED

    def __post_init__(self):
        checks.positive_int("imp.rounds", self.rounds)
        checks.number("imp.fraction", self.fraction, 0.0, 1.0, low_open=True, high_open=True)
        object.__setattr__(self, "prunable", checks.str_tuple(
            "imp.prunable", self.prunable, tuple(pruning_wrapper.PRUNABLE_TYPES),
            nonempty=True))
        try:
            nm = pruning.parse_pattern(self.pattern, "imp.pattern")
        except ValueError as e:
            raise errors.ConfigError(str(e)) from None
        if nm and self.rounds > nm[1] - nm[0]:
            checks.fail("imp.rounds", self.rounds,
                        f"a {self.pattern} pattern is reached after {nm[1] - nm[0]} rounds "
                        f"(one weight of every {nm[1]} per round)")

    @property
    def nm(self):
        return pruning.parse_pattern(self.pattern)

    def prune(self, kernels, masks, round_):
        """Ticket `round_`'s masks from the kernels (theta0 for round 1, else the weights
        trained under ticket `round_ - 1`'s `masks`)."""
        if self.nm is None:
            return pruning.global_magnitude_masks(kernels, masks, self.fraction)
        return pruning.nm_masks(kernels, self.nm[1] - round_, self.nm[1], masks)

    def ticket_meta(self, round_):
        """What a ticket of round `round_` records about how it was cut."""
        if self.nm is None:
            return {"fraction": self.fraction, "pattern": pruning.UNSTRUCTURED}
        return {"pattern": f"{self.nm[1] - round_}:{self.nm[1]}",
                "pattern_axis": pruning.NM_AXIS, "target_pattern": self.pattern}


def ticket_dir(workdir, k):
    return os.path.join(workdir, "tickets", f"round_{k:02d}")


def masked_model(pretrained_fn: Callable[[], tf_keras.Model], masks, prunable=("conv",)):
    """theta0 from `pretrained_fn` wrapped for pruning with `masks` applied (a rewind)."""
    model = pruning_wrapper.wrap(pretrained_fn(), prunable=prunable)
    pruning_wrapper.set_masks(model, masks)
    return model


def run_identity(train_spec: train.TrainSpec, imp_spec: ImpSpec, dataset: dict,
                 pretrained: dict, strategy=None, full=False) -> dict:
    """An IMP run's identity: pre-trained weights, data, round training, pruning, and the
    process settings that change its numbers (`runtime.settings`; `full`: resolved)."""
    out = {"kind": "imp", "pretrained": pretrained, "dataset": dataset,
           "train": identity.describe(train_spec, full), "imp": identity.describe(imp_spec, full)}
    settings = identity.describe(runtime.settings(strategy), full)
    if settings:
        out["runtime"] = settings
    return out


def run(pretrained_fn: Callable[[], tf_keras.Model], splits, train_spec: train.TrainSpec,
        imp_spec: ImpSpec, workdir: str, strategy=None, meta: Optional[dict] = None, *,
        pretrained: dict, overwrite: bool = False) -> List[str]:
    """Finds tickets 1..imp_spec.rounds; returns their directories.

    Args:
      pretrained_fn: builds the dense pre-trained model (theta0); called inside the
        strategy's scope for every round, which is the rewind.
      splits: the pre-training task's data.
      train_spec: training of each round (the reference: 30 epochs, lr 0.0005, constant).
      workdir: tickets go to <workdir>/tickets/round_KK, round trainings to
        <workdir>/train/round_KK.
      meta: recorded in every ticket (e.g. source weights' sha256, config).
      pretrained: the identity of the weights `pretrained_fn` builds
        (`convert.weights_identity`).
      overwrite: move a run of another identity in `workdir` aside instead of refusing.
    """
    # Several workers (MultiWorkerMirroredStrategy) train every round together; the
    # chief writes the tickets, the others keep the masks they computed (the same ones).
    chief = runtime.is_chief(strategy or tf.distribute.get_strategy())
    if chief:
        identity.claim(workdir, run_identity(train_spec, imp_spec, splits.identity, pretrained,
                                             strategy), overwrite, "IMP run",
                       resolved=run_identity(train_spec, imp_spec, splits.identity,
                                             pretrained, strategy, full=True))
    meta = dict(meta or {})
    paths = [ticket_dir(workdir, k) for k in range(1, imp_spec.rounds + 1)]
    masks = None  # the masks the next round starts from, when computed in this call
    if not tickets.is_ticket(paths[0]):
        theta0 = pruning_wrapper.wrap(pretrained_fn(), prunable=imp_spec.prunable)
        masks = imp_spec.prune(pruning_wrapper.get_kernels(theta0), None, 1)
        if chief:
            tickets.save(paths[0], masks, {**meta, "round": 1, "trained_rounds": 0,
                                           **imp_spec.ticket_meta(1)})
    for k in range(1, imp_spec.rounds):
        if tickets.is_ticket(paths[k]):
            masks = None
            continue
        if masks is None:
            masks, _ = tickets.load(paths[k - 1])
        result = train.fit(lambda m=masks: masked_model(pretrained_fn, m, imp_spec.prunable),
                           splits, train_spec, os.path.join(workdir, "train", f"round_{k:02d}"),
                           strategy, inputs={"kind": "imp_round", "pretrained": pretrained,
                                             "ticket": tickets.fingerprint(masks)})
        trained = pruning_wrapper.get_kernels(result.model)
        new_masks = imp_spec.prune(trained, masks, k + 1)
        if chief:
            tickets.save(paths[k], new_masks, {
                **meta, "round": k + 1, "trained_rounds": k, **imp_spec.ticket_meta(k + 1),
                "train_spec": train_spec.as_dict(),
                "previous_round_val": result.final.get("val_sa"),
                "previous_round_val_ra": result.final.get("val_ra")})
        masks = new_masks
    return paths


BASELINES = tuple(name for name, m in pruning.METHODS.items() if not m.iterative)


def baseline_ticket(pretrained_fn: Callable[[], tf_keras.Model], method: str, path: str,
                    pruned: Optional[int] = None, sparsity: Optional[float] = None,
                    seed: int = 0, prunable=("conv",), meta: Optional[dict] = None) -> str:
    """A one-shot ticket of the dense pre-trained weights: the paper's baselines.

    `omp` prunes the smallest |w| of theta0 globally, `random` uniformly random entries,
    both over the same layers IMP prunes (`prunable`), to exactly `pruned` zeros (e.g.
    an IMP ticket's count, for a comparison at equal sparsity) or to round(sparsity x
    weights). `omp_2by4` keeps the 2 largest |w| of every 4 input channels (its
    sparsity is the pattern's: give neither `pruned` nor `sparsity`). Written with
    `tickets.save` (never overwritten); returns the path.
    """
    if method not in BASELINES:
        raise ValueError(f"Unknown baseline {method!r}; choose one of {BASELINES}")
    nm = pruning.METHODS[method].nm
    kernels = pruning_wrapper.get_kernels(pruning_wrapper.wrap(pretrained_fn(),
                                                               prunable=prunable))
    if nm is not None:
        if pruned is not None or sparsity is not None:
            raise ValueError(f"{method} prunes to its {pruning.pattern_name(nm)} pattern; "
                             "give neither pruned nor sparsity")
        masks = pruning.one_shot_nm_masks(kernels, nm)
        return tickets.save(path, masks, {
            **(meta or {}), "method": method, "seed": seed, "trained_rounds": 0,
            "pattern": pruning.pattern_name(nm), "pattern_axis": pruning.NM_AXIS,
            "pruned": sum(int(m.size - m.sum()) for m in masks.values())})
    if (pruned is None) == (sparsity is None):
        raise ValueError("give exactly one of pruned (a count) and sparsity (a fraction)")
    total = sum(k.size for k in kernels.values())
    if pruned is not None and not 0 <= pruned < total:
        raise ValueError(f"pruned={pruned} outside [0, {total})")
    target = pruned / total if pruned is not None else sparsity
    masks = pruning.prune_to_sparsity(method, kernels, target, seed)
    zeros = sum(int(m.size - m.sum()) for m in masks.values())
    if pruned is not None and zeros != pruned:  # float rounding of the fraction: a bug
        raise AssertionError(f"{method} pruned {zeros} weights, asked for {pruned}")
    return tickets.save(path, masks, {**(meta or {}), "method": method, "seed": seed,
                                      "pruned": zeros, "trained_rounds": 0,
                                      "pattern": pruning.UNSTRUCTURED})
