"""Does a ticket match the dense model? The matching rules, and the paired bootstrap.

A verdict is a statistical claim, so the default rule, `paired`, states its uncertainty.
For SA and for RA separately it takes the difference *ticket minus dense* on the same
test examples (`records.py`): per seed, the mean over examples of (ticket correct) -
(dense correct), averaged over the seeds both have (seed s of the ticket paired with
seed s of the dense model). Its 95 % confidence interval comes from a paired bootstrap
over test examples -- hierarchical when there are several seeds: each resample draws
seeds with replacement, then test examples with replacement (one draw of examples for
all seeds: every seed saw the same examples). With a non-inferiority margin m (points):

* **yes** (matches): the interval's lower end is above -m -- the ticket is at most m
  points worse, with 95 % confidence;
* **no**: the upper end is below -m -- it is more than m points worse;
* **inconclusive**: the interval contains -m -- these data cannot tell.

What it is and is not: non-inferiority *on this test set's population of examples* at the
seeds that ran. One seed leaves training randomness out of the interval entirely; several
seeds put it in, but say nothing of seeds beyond a handful.

The older conventions stay available as yes/no rules: `tolerance` (mean within
`tolerance` points of the dense mean) and `std` (within the dense model's standard
deviation over seeds).

The bootstrap is vectorized: all comparisons on test sets of one size share one draw of
example resamples (a [resamples, examples] count matrix times a [examples, comparisons]
difference matrix), so a paper-sized study reports in seconds; every draw is seeded by
(`seed`, test-set size, number of seeds), so a report is the same on every run and a
comparison's interval does not depend on which other comparisons exist.
"""
import dataclasses
import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from dwlt_tf import checks

RULES = ("paired", "tolerance", "std")
YES, NO, INCONCLUSIVE = "yes", "no", "inconclusive"
_RESAMPLE_CHUNK = 256   # resamples per matrix product (bounds memory: chunk x examples)
_COLUMN_CHUNK = 2048    # comparisons' seed columns per product


@dataclasses.dataclass(frozen=True)
class Rule:
    """How a ticket is judged against the dense model (the `report` section)."""
    rule: str = "paired"
    margin: float = 1.0        # paired: non-inferiority margin, points
    tolerance: float = 0.0     # tolerance: points
    confidence: float = 0.95   # paired: of the interval
    resamples: int = 2000      # paired: bootstrap resamples
    seed: int = 0              # paired: of the bootstrap's draws

    def __post_init__(self):
        checks.choice("report.rule", self.rule, RULES)
        checks.number("report.margin", self.margin, 0.0)
        checks.number("report.tolerance", self.tolerance, 0.0)
        checks.number("report.confidence", self.confidence, 0.5, 1.0, high_open=True)
        checks.integer("report.resamples", self.resamples, 100, 1_000_000)
        checks.seed("report.seed", self.seed)


@dataclasses.dataclass(frozen=True)
class Difference:
    """Ticket minus dense of one metric, in points, with its interval and verdict."""
    estimate: float
    low: float
    high: float
    verdict: str                 # yes | no | inconclusive
    examples: int
    seeds: int
    # The interval's half-width from resampling examples alone (seeds fixed): with the
    # whole half-width it tells how much more data, of which kind, would settle it.
    examples_half_width: float

    @property
    def half_width(self):
        return (self.high - self.low) / 2

    def settle(self, margin) -> Optional[str]:
        """For an inconclusive verdict: roughly how many test images (and seeds) would
        narrow the interval until it just excludes -margin, were the estimate to stay
        where it is (the half-width falls like 1/sqrt(examples) and, for the seeds'
        part, 1/sqrt(seeds)); None otherwise."""
        if self.verdict != INCONCLUSIVE:
            return None
        gap = abs(self.estimate + margin)
        if gap < 0.05:
            return (f"its difference sits at the margin (-{margin:g}): no realistic test set "
                    "decides it")
        seeds_part = math.sqrt(max(self.half_width ** 2 - self.examples_half_width ** 2, 0.0))
        if self.seeds > 1 and seeds_part >= gap:
            factor = (self.half_width / gap) ** 2
            return (f"the seeds' spread alone exceeds the distance to the margin: about "
                    f"{math.ceil(self.seeds * factor)} seeds and "
                    f"{_round_up(self.examples * factor):,} test images")
        factor = self.examples_half_width ** 2 / max(gap ** 2 - seeds_part ** 2, 1e-12)
        needed = _round_up(self.examples * factor)
        return f"about {needed:,} test images (now {self.examples:,})" + (
            f" at {self.seeds} seeds" if self.seeds > 1 else "")


def _round_up(value):
    """Up to two significant digits: 4,213 -> 4,300."""
    value = max(int(math.ceil(value)), 1)
    step = 10 ** max(len(str(value)) - 2, 0)
    return -(-value // step) * step


def judge(estimate, low, high, margin) -> str:
    """yes / no / inconclusive for an interval [low, high] against -margin."""
    if low > -margin:
        return YES
    if high < -margin:
        return NO
    return INCONCLUSIVE


def combine(verdicts: Sequence[Optional[str]]) -> Optional[str]:
    """Several verdicts that must all hold (SA and RA; standard and adversarial): no if
    any is no, yes if all are yes, None if one is missing, else inconclusive."""
    if NO in verdicts:
        return NO
    if any(v is None for v in verdicts):
        return None
    return YES if all(v == YES for v in verdicts) else INCONCLUSIVE


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One paired comparison: per seed (rows, paired by position), which test examples
    the ticket and the dense model got right."""
    ticket: np.ndarray   # bool [seeds, examples]
    dense: np.ndarray    # bool [seeds, examples]

    def __post_init__(self):
        ticket, dense = np.atleast_2d(self.ticket), np.atleast_2d(self.dense)
        if ticket.shape != dense.shape or ticket.size == 0:
            raise ValueError(f"paired outcomes need equal, non-empty shapes; got "
                             f"{ticket.shape} and {dense.shape}")
        object.__setattr__(self, "ticket", ticket.astype(bool))
        object.__setattr__(self, "dense", dense.astype(bool))

    @property
    def seeds(self):
        return self.ticket.shape[0]

    @property
    def examples(self):
        return self.ticket.shape[1]

    def per_example(self):
        """(ticket - dense) per seed and example: -1, 0 or 1."""
        return self.ticket.astype(np.int8) - self.dense.astype(np.int8)


def paired_bootstrap(comparisons: List[Comparison], rule: Rule) -> List[Difference]:
    """The `Difference` of each comparison (module docstring), in points."""
    out: List[Optional[Difference]] = [None] * len(comparisons)
    by_examples: Dict[int, List[int]] = {}
    for k, comparison in enumerate(comparisons):
        by_examples.setdefault(comparison.examples, []).append(k)
    alpha = (1 - rule.confidence) / 2
    for examples, members in sorted(by_examples.items()):
        # Per seed, the mean difference in every resample of the examples: [B, columns].
        columns = np.concatenate([comparisons[k].per_example().T for k in members], axis=1)
        means = _resampled_means(columns, rule.resamples, rule.seed)
        start = 0
        for k in members:
            comparison = comparisons[k]
            seed_means = means[:, start:start + comparison.seeds]  # [B, seeds]
            start += comparison.seeds
            examples_only = seed_means.mean(axis=1)
            resampled = examples_only if comparison.seeds == 1 else _resample_seeds(
                seed_means, rule.seed, examples)
            estimate = 100.0 * float(comparison.per_example().mean())
            low, high = (100.0 * np.quantile(resampled, [alpha, 1 - alpha])).tolist()
            ex_low, ex_high = (100.0 * np.quantile(examples_only, [alpha, 1 - alpha])).tolist()
            out[k] = Difference(estimate, low, high, judge(estimate, low, high, rule.margin),
                                examples, comparison.seeds, (ex_high - ex_low) / 2)
    return out


def _resampled_means(columns, resamples, seed):
    """[resamples, columns]: each column's mean over a bootstrap resample of its rows
    (the rows -- test examples -- drawn with replacement, the same draw for every column)."""
    examples = columns.shape[0]
    rng = np.random.default_rng([seed, examples])
    values = columns.astype(np.float32)
    out = np.empty((resamples, columns.shape[1]), np.float64)
    for first in range(0, resamples, _RESAMPLE_CHUNK):
        rows = min(_RESAMPLE_CHUNK, resamples - first)
        drawn = rng.integers(0, examples, size=(rows, examples))
        counts = np.bincount((drawn + examples * np.arange(rows)[:, None]).ravel(),
                             minlength=rows * examples).reshape(rows, examples)
        counts = counts.astype(np.float32)
        for col in range(0, values.shape[1], _COLUMN_CHUNK):
            # Counts and differences are small integers: float32 sums are exact here.
            out[first:first + rows, col:col + _COLUMN_CHUNK] = (
                counts @ values[:, col:col + _COLUMN_CHUNK]) / examples
    return out


def _resample_seeds(seed_means, seed, examples):
    """[B]: the mean over a resample of the seeds (drawn with replacement) of each row."""
    resamples, seeds = seed_means.shape
    rng = np.random.default_rng([seed, examples, seeds])
    weights = rng.multinomial(seeds, [1.0 / seeds] * seeds, size=resamples)
    return (weights * seed_means).sum(axis=1) / seeds


def mean_std(values):
    """Mean and sample standard deviation (0 for one value)."""
    values = list(values)
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def by_means(ticket: Sequence[float], dense: Sequence[float], rule: Rule) -> str:
    """The `tolerance` and `std` rules: yes / no from per-seed values (percent)."""
    ticket_mean, _ = mean_std(ticket)
    dense_mean, dense_std = mean_std(dense)
    slack = rule.tolerance if rule.rule == "tolerance" else dense_std
    return YES if ticket_mean >= dense_mean - slack else NO
