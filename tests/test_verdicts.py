"""Tests for verdicts.py: the paired bootstrap on records with known answers."""
import numpy as np
import pytest

from dwlt_tf import errors, verdicts

RULE = verdicts.Rule(margin=1.0, resamples=2000, seed=0)


def _pair(examples, dense_correct, ticket_minus_dense, seed=0, discordant=0.1):
    """(ticket, dense) bool arrays over `examples`: the dense model right on a fraction
    `dense_correct`; the ticket differs on about `discordant` of them, with a net
    difference of `ticket_minus_dense` (fraction)."""
    rng = np.random.default_rng(seed)
    dense = rng.random(examples) < dense_correct
    ticket = dense.copy()
    flips = int(round(discordant * examples / 2))
    gained = int(round(ticket_minus_dense * examples))
    right, wrong = np.flatnonzero(dense), np.flatnonzero(~dense)
    rng.shuffle(right)
    rng.shuffle(wrong)
    lose, win = flips - min(gained, 0), flips + max(gained, 0)
    ticket[right[:lose]] = False
    ticket[wrong[:win]] = True
    return ticket, dense


def _one(ticket, dense, rule=RULE):
    (difference,) = verdicts.paired_bootstrap([verdicts.Comparison(ticket, dense)], rule)
    return difference


def test_identical_models_match_with_an_interval_containing_zero():
    ticket, dense = _pair(1000, 0.7, 0.0, discordant=0.0)
    assert np.array_equal(ticket, dense)
    difference = _one(ticket, dense)
    assert difference.low <= 0.0 <= difference.high
    assert (difference.estimate, difference.verdict) == (0.0, "yes")


def test_a_ticket_five_points_worse_on_5000_examples_does_not_match():
    ticket, dense = _pair(5000, 0.7, -0.05)
    difference = _one(ticket, dense)
    assert difference.estimate == pytest.approx(-5.0, abs=0.05)
    assert difference.high < -1.0 and difference.verdict == "no"


def test_a_one_point_difference_on_500_examples_is_inconclusive():
    ticket, dense = _pair(500, 0.7, -0.01)
    difference = _one(ticket, dense)
    assert difference.estimate == pytest.approx(-1.0, abs=0.01)
    assert difference.low < -1.0 < difference.high
    assert difference.verdict == "inconclusive"
    assert "sits at the margin" in difference.settle(1.0)


def test_a_ticket_two_points_better_on_5000_examples_matches():
    ticket, dense = _pair(5000, 0.7, 0.02)
    difference = _one(ticket, dense)
    assert difference.low > -1.0 and difference.verdict == "yes"
    assert difference.settle(1.0) is None


def test_the_interval_shrinks_as_examples_grow():
    widths = []
    for examples in (500, 5000, 50000):
        difference = _one(*_pair(examples, 0.7, -0.01, seed=3))
        widths.append(difference.high - difference.low)
    # Same discordance: the width falls like 1 / sqrt(examples) (x 1/3.16 per step).
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[1] == pytest.approx(np.sqrt(10), rel=0.2)
    assert widths[1] / widths[2] == pytest.approx(np.sqrt(10), rel=0.2)


def test_inconclusive_says_how_many_test_images_would_settle_it():
    ticket, dense = _pair(500, 0.7, -0.03, seed=1)
    difference = _one(ticket, dense)
    assert difference.verdict == "inconclusive"
    text = difference.settle(1.0)
    needed = int(text.split("about ")[1].split(" test")[0].replace(",", ""))
    # It is where the interval just reaches -1 at this estimate: with a little more the
    # interval excludes -1 ...
    assert _one(*_pair(int(needed * 1.5), 0.7, -0.03, seed=1)).verdict == "no"
    # ... and it is not a wild overestimate: a quarter of it stays undecided.
    assert _one(*_pair(needed // 4, 0.7, -0.03, seed=1)).verdict == "inconclusive"


def test_seeds_are_resampled_too_and_paired_by_position():
    examples = 4000
    # Three seeds: the ticket is 3 points better, 3 points worse, even -- a real
    # spread over seeds that the examples-only interval does not see.
    pairs = [_pair(examples, 0.7, d, seed=s) for s, d in enumerate((0.03, -0.03, 0.0))]
    comparison = verdicts.Comparison(np.stack([p[0] for p in pairs]),
                                     np.stack([p[1] for p in pairs]))
    difference = verdicts.paired_bootstrap([comparison], RULE)[0]
    assert difference.seeds == 3 and difference.estimate == pytest.approx(0.0, abs=0.05)
    assert difference.half_width > 1.5 * difference.examples_half_width
    assert difference.verdict == "inconclusive"
    # The same seed three times: no spread between seeds, the hierarchical interval is
    # the examples-only one.
    same = verdicts.Comparison(np.stack([pairs[2][0]] * 3), np.stack([pairs[2][1]] * 3))
    repeated = verdicts.paired_bootstrap([same], RULE)[0]
    assert repeated.half_width == pytest.approx(repeated.examples_half_width, rel=0.05)
    assert repeated.half_width == pytest.approx(_one(*pairs[2]).half_width, rel=0.05)
    # The seeds' part dominates, so the advice is more seeds.
    assert "seeds" in difference.settle(1.0)


def test_intervals_cover_the_true_difference_about_95_percent_of_the_time():
    # 300 independent test sets drawn from one population where the ticket is truly
    # 1.5 points worse (per example: ticket right and dense wrong with p=0.05, the
    # reverse with p=0.065): about 95 % of the intervals must contain -1.5.
    rng = np.random.default_rng(7)
    comparisons = []
    for _ in range(300):
        u = rng.random(800)
        dense = rng.random(800) < 0.7
        ticket = dense.copy()
        ticket[(u < 0.05)] = True
        ticket[(u >= 0.05) & (u < 0.115)] = False
        dense[(u < 0.05)] = False
        dense[(u >= 0.05) & (u < 0.115)] = True
        comparisons.append(verdicts.Comparison(ticket, dense))
    differences = verdicts.paired_bootstrap(comparisons, verdicts.Rule(resamples=1000))
    covered = np.mean([d.low <= -1.5 <= d.high for d in differences])
    assert 0.91 <= covered <= 0.99


def test_the_same_records_give_the_same_intervals_whatever_else_is_compared():
    first = verdicts.Comparison(*_pair(1000, 0.6, -0.01, seed=2))
    other = verdicts.Comparison(*_pair(1000, 0.8, 0.02, seed=4))
    alone = verdicts.paired_bootstrap([first], RULE)[0]
    together = verdicts.paired_bootstrap([other, first], RULE)[1]
    assert alone == together == verdicts.paired_bootstrap([first], RULE)[0]
    assert verdicts.paired_bootstrap([first], verdicts.Rule(seed=1))[0] != alone


def test_combined_verdicts():
    assert verdicts.combine(["yes", "yes"]) == "yes"
    assert verdicts.combine(["yes", "inconclusive"]) == "inconclusive"
    assert verdicts.combine(["inconclusive", "no"]) == "no"
    assert verdicts.combine(["yes", None]) is None
    assert verdicts.combine(["no", None]) == "no"


def test_the_older_rules_compare_means():
    assert verdicts.by_means([80.0], [80.5], verdicts.Rule("tolerance", tolerance=1.0)) == "yes"
    assert verdicts.by_means([80.0], [80.5], verdicts.Rule("tolerance")) == "no"
    # std: within the dense model's standard deviation over seeds (2 here).
    assert verdicts.by_means([80, 81, 80.5], [80, 82, 84], verdicts.Rule("std")) == "yes"


@pytest.mark.parametrize("kwargs, match", [
    (dict(rule="sigma"), r"report.rule='sigma': choose one of"),
    (dict(margin=-1.0), r"report.margin=-1.0"),
    (dict(resamples=10), r"report.resamples=10"),
    (dict(confidence=1.0), r"report.confidence=1.0"),
    (dict(seed=-3), r"report.seed=-3"),
])
def test_bad_rules_name_the_key_and_value(kwargs, match):
    with pytest.raises(errors.ConfigError, match=match):
        verdicts.Rule(**kwargs)


def test_unpaired_shapes_are_refused():
    with pytest.raises(ValueError, match="equal, non-empty shapes"):
        verdicts.Comparison(np.ones(10, bool), np.ones(11, bool))
