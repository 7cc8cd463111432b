"""The study's answer: which tickets are double-win, tables and SA/RA-vs-sparsity plots.

Definitions (the paper's): for one pre-training, downstream dataset and data rate, a
ticket is *matching* under a transfer regime (standard or adversarial) when its test SA
and its test RA are each no worse than the dense model's under the same regime; it is
*double-win* when it is matching under both regimes. SA is the test SA of the best-SA
checkpoint and RA the test RA of the best-RA checkpoint, both selected on validation as
the reference does. With several seeds, SA and RA are means over seeds (sample standard
deviations alongside), and "no worse" follows the configured rule (`verdicts.py`):

* `paired` (the default): the difference ticket - dense on the same test examples with a
  paired-bootstrap confidence interval, judged against a non-inferiority margin --
  yes, no or inconclusive (double-win: yes under both regimes);
* `tolerance`: mean >= dense mean - `tolerance` points (0: strictly no worse);
* `std`: mean >= dense mean - the dense model's standard deviation over seeds (the
  lottery-ticket literature's "within one standard deviation"; one seed: tolerance 0).

Tickets of every pruning method (`imp`, and the `omp` / `random` baselines at the same
sparsities; `imp_2by4` and its `omp_2by4` baseline, 2:4 structured) get verdicts; the
IMP tickets are the study's tickets, the others tell whether IMP beats one-shot and
random pruning at equal sparsity, and whether a 2:4 ticket -- the sparsity GPUs run
faster -- keeps up with the unstructured ticket of nearest sparsity.
"""
import collections
import csv
import io
import os

import numpy as np

from dwlt_tf import files, pruning, records, verdicts

REGIMES = ("standard", "adversarial")
RULES = verdicts.RULES
METHODS = tuple(pruning.METHODS)
AUDIT_ATTACKS = ("pgd", "apgd_ce", "apgd_t", "fab_t", "apgd_dlr", "square")
AUDIT_NAMES = {"pgd": "PGD RA", "apgd_ce": "APGD-CE", "apgd_t": "APGD-T", "fab_t": "FAB-T",
               "apgd_dlr": "APGD-DLR", "square": "Square"}
COLUMNS = ("pretraining", "dataset", "data_rate", "regime", "method", "ticket", "sparsity",
           "seed", "sa", "ra", "sa_ckpt_test_ra", "ra_ckpt_test_sa", "val_sa", "val_ra",
           "ra_attack") + tuple(f"audit_{a}_ra" for a in AUDIT_ATTACKS) + (
    "audit_autoattack_ra", "audit_worst_case_ra", "audit_version",
    "audit_gradient_masking_suspected", "cell")


def attack_label(attack):
    """A short description of the attack behind an RA (`train.attack_description`)."""
    if not attack:
        return "none"

    def px(value):  # eps and step size in 0-255 pixel units, as papers state them
        return f"{value * 255:.4g}/255"
    return (f"{attack['method'].upper()}-{attack['steps']} {attack['norm']} eps {px(attack['eps'])}"
            f" step {px(attack['step_size'])}, {attack['restarts']} restart"
            f"{'s' if attack['restarts'] != 1 else ''}"
            f"{', random start' if attack.get('random_start') else ''} ({attack['library']})")


def _group_key(row):
    return row.pretraining, row.dataset, row.data_rate


def _method(row):
    return row.method


mean_std = verdicts.mean_std


def _aggregate(members):
    """{"sa", "sa_std", "ra", "ra_std", "n"} over the rows of one ticket and regime."""
    sa, sa_std = mean_std([r.sa for r in members])
    ra, ra_std = mean_std([r.ra for r in members])
    return {"sa": sa, "sa_std": sa_std, "ra": ra, "ra_std": ra_std, "n": len(members)}


# What each metric's verdict compares, per example: SA of the best-SA checkpoint clean,
# RA of the best-RA checkpoint attacked -- exactly the reported SA and RA.
RECORDED = {"sa": "best_sa/clean", "ra": "best_ra/robust"}


class _Outcomes:
    """Per-example outcomes of rows, read once (`load(relative path) -> ExampleRecords`)
    and checked: each record reproduces its row's reported number."""

    def __init__(self, load):
        self.load, self._cache = load, {}

    def of(self, row):
        if row.cell not in self._cache:
            if not row.records:
                raise records.RecordsError(f"{row.cell}: no per-example records (the "
                                           "`paired` rule needs them)")
            found = self.load(row.records)
            for metric, name in RECORDED.items():
                if name not in found.correct or abs(
                        found.accuracy(name) - getattr(row, metric)) > 1e-6:
                    raise records.RecordsError(
                        f"{row.records}: its {name} does not reproduce the run's reported "
                        f"{metric.upper()} {getattr(row, metric)} (a damaged or foreign file?)")
            self._cache[row.cell] = found
        return self._cache[row.cell]

    def comparison(self, ticket_rows, dense_rows, metric):
        """The paired comparison of `metric` over the seeds both have, or None."""
        tickets = {r.seed: r for r in ticket_rows}
        dense = {r.seed: r for r in dense_rows}
        seeds = sorted(set(tickets) & set(dense))
        if not seeds:
            return None
        pairs = []
        for seed in seeds:
            ours, theirs = self.of(tickets[seed]), self.of(dense[seed])
            records.check_comparable(ours, theirs, tickets[seed].cell, dense[seed].cell)
            pairs.append((ours.correct[RECORDED[metric]], theirs.correct[RECORDED[metric]]))
        return verdicts.Comparison(np.stack([p[0] for p in pairs]),
                                   np.stack([p[1] for p in pairs]))


def analyze(rows, rule: verdicts.Rule, load=None):
    """Matching / double-win per group and pruning method. Returns {group: summary}.

    `rule` (`verdicts.Rule`); the `paired` rule reads per-example records through
    `load(row.records) -> records.ExampleRecords` (e.g. `records.read_file` under the
    workdir). Verdicts are "yes", "no", "inconclusive" or None (a side missing)."""
    outcomes = _Outcomes(load) if rule.rule == "paired" else None
    if outcomes is not None and load is None:
        raise ValueError("the paired rule needs `load` to read per-example records")
    groups = collections.defaultdict(list)
    for row in rows:
        groups[_group_key(row)].append(row)
    summary, pending = {}, []   # pending: (verdict dict, key, Comparison) for the bootstrap
    for key, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        summary[key] = _judge_group(members, rule, outcomes, pending)
    if pending:  # one vectorized bootstrap for every comparison of the study
        differences = verdicts.paired_bootstrap([c for _, _, c in pending], rule)
        for (verdict, name, _), difference in zip(pending, differences):
            verdict[f"{name}_diff"] = difference
            verdict[f"{name}_match"] = difference.verdict
    for group in summary.values():
        _conclude(group)
    return summary


def _judge_group(members, rule, outcomes, pending):
    """One group's values and per-metric verdicts; paired comparisons go to `pending`."""
    by = collections.defaultdict(list)
    for r in members:
        by[(_method(r), r.ticket, r.regime)].append(r)
    dense_rows = {regime: by[("dense", "dense", regime)] for regime in REGIMES
                  if by.get(("dense", "dense", regime))}
    tickets = sorted({(_method(r), r.ticket, r.sparsity) for r in members
                      if r.ticket != "dense"},
                     key=lambda t: (t[2], METHODS.index(t[0]) if t[0] in METHODS else 9))
    group_verdicts = []
    for method, ticket, sparsity in tickets:
        verdict = {"method": method, "ticket": ticket, "sparsity": sparsity}
        for regime in REGIMES:
            rows_here = by.get((method, ticket, regime))
            stats = _aggregate(rows_here) if rows_here else None
            for field in ("sa", "sa_std", "ra", "ra_std", "n"):
                verdict[f"{regime}_{field}"] = stats[field] if stats else None
            for metric in ("sa", "ra"):
                verdict[f"{regime}_{metric}_diff"] = None
                verdict[f"{regime}_{metric}_match"] = None
                if not (rows_here and regime in dense_rows):
                    continue
                if outcomes is None:
                    verdict[f"{regime}_{metric}_match"] = verdicts.by_means(
                        [getattr(r, metric) for r in rows_here],
                        [getattr(r, metric) for r in dense_rows[regime]], rule)
                    continue
                comparison = outcomes.comparison(rows_here, dense_rows[regime], metric)
                if comparison is not None:
                    pending.append((verdict, f"{regime}_{metric}", comparison))
        group_verdicts.append(verdict)
    return {"dense": {regime: _aggregate(found) for regime, found in dense_rows.items()},
            "tickets": group_verdicts,
            "versus": _versus_baselines(by, tickets, outcomes, pending) if outcomes else [],
            "structured": (_structured_versus_unstructured(by, tickets, outcomes, pending)
                           if outcomes else [])}


def _versus_baselines(by, tickets, outcomes, pending):
    """Each IMP method minus its one-shot baselines at the same ticket (equal sparsity;
    `imp_2by4` against `omp_2by4`), example by example: [{"method", "versus", "ticket",
    "sparsity", "<regime>_<metric>_diff"}], filled by the bootstrap."""
    out = []
    for method, ticket, sparsity in tickets:
        reference = pruning.METHODS[method].versus if method in pruning.METHODS else None
        if reference is None or not any(t[0] == reference and t[1] == ticket
                                         for t in tickets):
            continue
        entry = {"method": method, "versus": reference, "ticket": ticket,
                 "sparsity": sparsity}
        _pair(entry, by.get, (reference, ticket), (method, ticket), outcomes, pending)
        out.append(entry)
    return out


def _pair(entry, rows_of, ours, theirs, outcomes, pending):
    """Queues `ours` minus `theirs` ((method, ticket) each) per regime and metric."""
    for regime in REGIMES:
        for metric in ("sa", "ra"):
            entry[f"{regime}_{metric}_diff"] = None
            mine, other = rows_of(ours + (regime,)), rows_of(theirs + (regime,))
            comparison = outcomes.comparison(mine, other, metric) if mine and other else None
            if comparison is not None:
                pending.append((entry, f"{regime}_{metric}", comparison))


def _structured_versus_unstructured(by, tickets, outcomes, pending):
    """Each N:M IMP ticket minus the unstructured IMP ticket of nearest sparsity:
    [{"method", "ticket", "sparsity", "unstructured", "unstructured_sparsity",
    "<regime>_<metric>_diff"}]."""
    unstructured = [t for t in tickets if t[0] == "imp"]
    out = []
    for method, ticket, sparsity in tickets:
        spec = pruning.METHODS.get(method)
        if spec is None or spec.nm is None or not spec.iterative or not unstructured:
            continue
        near = min(unstructured, key=lambda t: (abs(t[2] - sparsity), t[2]))
        entry = {"method": method, "ticket": ticket, "sparsity": sparsity,
                 "unstructured": near[1], "unstructured_sparsity": near[2]}
        _pair(entry, by.get, (method, ticket), ("imp", near[1]), outcomes, pending)
        out.append(entry)
    return out


def _conclude(group):
    """Per ticket: matching per regime (SA and RA) and double-win; per method, the
    sparsest double-win ticket."""
    for verdict in group["tickets"]:
        for regime in REGIMES:
            verdict[regime] = verdicts.combine([verdict[f"{regime}_sa_match"],
                                                verdict[f"{regime}_ra_match"]])
        verdict["double_win"] = verdicts.combine([verdict[r] for r in REGIMES])
    by_method = {}
    for method in sorted({v["method"] for v in group["tickets"]}):
        double = [v for v in group["tickets"]
                  if v["method"] == method and v["double_win"] == verdicts.YES]
        by_method[method] = max(double, key=lambda v: v["sparsity"]) if double else None
    group["sparsest_double_win"] = by_method.get("imp")
    group["sparsest_double_win_by_method"] = by_method


def _best_seed(rows):
    """Among one ticket's seeds, the run to deploy: best validation RA (ties: lowest seed)."""
    return max(rows, key=lambda r: (r.val_ra or 0.0, -r.seed))


def choose_export(rows, summary, method="imp"):
    """The ticket to deploy among `method`'s (default IMP; e.g. `imp_2by4` for a 2:4
    ticket): its sparsest double-win ticket (ties: higher adversarial RA); without any,
    its ticket with the best adversarial RA. Of its seeds, the run with the best
    validation RA. Returns (row, reason)."""
    candidates = []
    for key, group in summary.items():
        v = group["sparsest_double_win_by_method"].get(method)
        if v:
            candidates.append((v["sparsity"], v["adversarial_ra"] or 0.0, key, v["ticket"]))
    adversarial = [r for r in rows if r.regime == "adversarial" and _method(r) == method]
    label = "" if method == "imp" else f"{method} "
    if candidates:
        sparsity, _, key, ticket = max(candidates)
        row = _best_seed([r for r in adversarial
                          if _group_key(r) == key and r.ticket == ticket])
        return row, (f"sparsest double-win {label}ticket ({ticket}, {100 * sparsity:.2f}% "
                     f"sparse, {key[0]} pre-training, {key[1]} at data rate {key[2]})")
    if not adversarial:
        return None, f"no adversarially transferred {label}ticket to export"
    best = max(adversarial, key=lambda r: (r.ra, r.sa))
    row = _best_seed([r for r in adversarial
                      if _group_key(r) == _group_key(best) and r.ticket == best.ticket])
    key = _group_key(row)
    return row, (f"the {label}ticket with the best adversarial RA ({row.ticket}, "
                 f"{100 * row.sparsity:.2f}% sparse, {key[0]} pre-training, {key[1]} at data "
                 f"rate {key[2]}; no {label}ticket is double-win)")


def write_tables(rows, workdir):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    records = [row.record() for row in rows]
    for record in records:
        writer.writerow(record)
    files.update_text(os.path.join(workdir, "results.csv"), buffer.getvalue())
    files.update_json(os.path.join(workdir, "results.json"), records)


def _fmt(value, std=None, n=None):
    if value is None:
        return "–"
    if n and n > 1:
        return f"{value:.2f} ± {std:.2f}"
    return f"{value:.2f}"


def _signed(value):
    return f"{value:+.2f}"


def _interval(difference):
    """"+0.40 [-0.90, +1.70]" (points) or "–"."""
    if difference is None:
        return "–"
    return (f"{_signed(difference.estimate)} [{_signed(difference.low)}, "
            f"{_signed(difference.high)}]")


def _mark(verdict):
    return "–" if verdict is None else verdict


def _rule_text(rule: verdicts.Rule, examples):
    if rule.rule == "paired":
        size = f" {', '.join(f'{n:,}' for n in examples)}" if examples else ""
        return (f"for SA and for RA, the difference ticket - dense on the same{size} test "
                f"examples (points) with its {100 * rule.confidence:g} % paired-bootstrap "
                f"interval ({rule.resamples:,} resamples; with several seeds hierarchical: "
                "seeds, then examples); **yes**: the interval's lower end is above "
                f"-{rule.margin:g} (non-inferior at a {rule.margin:g}-point margin), **no**: "
                f"its upper end is below -{rule.margin:g}, **inconclusive**: it contains "
                f"-{rule.margin:g}. A ticket matches under a regime when SA and RA both do")
    if rule.rule == "std":
        return ("SA and RA (means over seeds) each at least the dense model's mean minus its "
                "standard deviation over seeds, under the same transfer regime")
    return (f"SA and RA (means over seeds) each within {rule.tolerance:g} points of the "
            "dense model's under the same transfer regime")


def _test_sizes(summary):
    return sorted({d.examples for group in summary.values() for v in group["tickets"]
                   for d in _differences(v) if d is not None})


def _differences(verdict):
    return [verdict.get(f"{regime}_{metric}_diff") for regime in REGIMES
            for metric in ("sa", "ra")]


def markdown(rows, summary, rule: verdicts.Rule, export_note=None, seeds=None, audits=None,
             status=None, audit_differences=None):
    """The report. `audits`: [(row, AuditResult-like dict)] of audited models; `status`: a
    line under the title (e.g. that the results are partial); `audit_differences`: from
    `compare_audits`."""
    seeds = sorted({r.seed for r in rows}) if seeds is None else list(seeds)
    lines = ["# Double-win lottery tickets: study report", ""] + ([status, ""] if status else [])
    lines += [
             f"Matching (rule `{rule.rule}`): {_rule_text(rule, _test_sizes(summary))}; "
             "double-win: matching under standard *and* adversarial transfer. SA = test SA "
             "of the best-SA checkpoint, RA = test RA of the best-RA checkpoint (both "
             "selected on validation).", "",
             f"Seeds: {', '.join(str(s) for s in seeds)}" + _seeds_text(seeds, rule), ""]
    attacks = sorted({r.ra_attack for r in rows if r.ra_attack})
    if attacks:
        lines += ["RA measured with: " + "; ".join(attacks) + ".", ""]
    if rule.rule == "paired":
        lines += _tally(summary)
    for (pretraining, dataset, rate), group in summary.items():
        lines += [f"## {pretraining} pre-training → {dataset}, data rate {rate:g}", ""]
        lines += (_paired_table(group) if rule.rule == "paired" else _means_table(group))
        best = group["sparsest_double_win"]
        lines += ["", (f"Sparsest double-win ticket: **{best['ticket']}** "
                       f"({100 * best['sparsity']:.2f}% sparse)." if best
                       else "No double-win ticket in this setting" + (
                           _why_not(group, rule) if rule.rule == "paired" else "."))]
        baselines = {m: v for m, v in group["sparsest_double_win_by_method"].items()
                     if m in pruning.METHODS and not pruning.METHODS[m].iterative}
        if baselines:
            lines.append("Sparsest double-win baseline: " + "; ".join(
                f"{m}: " + (f"{v['ticket']} ({100 * v['sparsity']:.2f}%)" if v else "none")
                for m, v in sorted(baselines.items())) + ".")
        if rule.rule == "paired":
            lines += _unsettled(group, rule) + _versus_table(group) + _structured_table(group)
        lines.append("")
    if audits:
        lines += _audit_section(audits, audit_differences or [])
    if export_note:
        lines += ["## Export", "", export_note, ""]
    return "\n".join(lines)


def headline(summary):
    """A few lines for the terminal: per setting, the sparsest double-win ticket and how
    the double-win verdicts came out."""
    lines = []
    for (pretraining, dataset, rate), group in summary.items():
        counts = collections.Counter(v["double_win"] for v in group["tickets"])
        best = group["sparsest_double_win"]
        structured = [f"{v['ticket']} ({v['method']}) double-win {_mark(v['double_win'])}"
                      for v in group["tickets"] if v["method"] in pruning.METHODS
                      and pruning.METHODS[v["method"]].nm is not None]
        lines.append(f"{pretraining} pre-training -> {dataset} @ {rate:g}: sparsest double-win "
                     + (f"{best['ticket']} ({100 * best['sparsity']:.2f}%)" if best else "none")
                     + "; double-win " + ", ".join(f"{counts[w]} {w}" for w in (
                         verdicts.YES, verdicts.NO, verdicts.INCONCLUSIVE) if counts[w])
                     + "".join(f"; {text}" for text in structured))
    return lines


def _seeds_text(seeds, rule):
    if len(seeds) > 1:
        return " (values: mean ± sample standard deviation over seeds)."
    if rule.rule == "paired":
        return (" (one seed per transfer: no spread to report; the intervals cover the "
                "choice of test examples, not training randomness).")
    return " (one seed per transfer: no spread to report)."


def _tally(summary):
    """One line: how many double-win verdicts are yes / no / inconclusive."""
    counts = collections.Counter(v["double_win"] for group in summary.values()
                                 for v in group["tickets"])
    if not counts:
        return []
    parts = [f"{counts[word]} {word}" for word in (verdicts.YES, verdicts.NO,
                                                    verdicts.INCONCLUSIVE) if counts[word]]
    missing = counts[None]
    return [f"Double-win verdicts over {sum(counts.values())} tickets: " + ", ".join(parts)
            + (f", {missing} not yet decidable (a transfer missing)" if missing else "")
            + ".", ""]


def _means_table(group):
    lines = ["| ticket | method | sparsity | std SA | std RA | adv SA | adv RA | "
             "std match | adv match | double-win |", "|---|---|---|---|---|---|---|---|---|---|"]
    cells = []
    for regime in REGIMES:
        d = group["dense"].get(regime, {})
        cells += [_fmt(d.get("sa"), d.get("sa_std"), d.get("n")),
                  _fmt(d.get("ra"), d.get("ra_std"), d.get("n"))]
    lines.append(f"| dense | | 0.00% | {' | '.join(cells)} | | | |")
    for v in group["tickets"]:
        cells = []
        for regime in REGIMES:
            cells += [_fmt(v[f"{regime}_sa"], v[f"{regime}_sa_std"], v[f"{regime}_n"]),
                      _fmt(v[f"{regime}_ra"], v[f"{regime}_ra_std"], v[f"{regime}_n"])]
        lines.append(
            f"| {v['ticket']} | {v['method']} | {100 * v['sparsity']:.2f}% | "
            f"{' | '.join(cells)} | {_mark(v['standard'])} | {_mark(v['adversarial'])} | "
            f"{_double(v['double_win'])} |")
    return lines


def _double(verdict):
    return "**yes**" if verdict == verdicts.YES else _mark(verdict)


def _paired_table(group):
    """Values, differences with intervals and verdicts, regime by regime."""
    lines = ["| ticket | method | sparsity | std SA | ΔSA [95 % CI] | std RA | ΔRA [95 % CI] "
             "| std match | adv SA | ΔSA [95 % CI] | adv RA | ΔRA [95 % CI] | adv match "
             "| double-win |", "|" + "---|" * 14]
    cells = []
    for regime in REGIMES:
        d = group["dense"].get(regime, {})
        cells += [_fmt(d.get("sa"), d.get("sa_std"), d.get("n")), "",
                  _fmt(d.get("ra"), d.get("ra_std"), d.get("n")), "", ""]
    lines.append(f"| dense | | 0.00% | {' | '.join(cells)} | |")
    for v in group["tickets"]:
        cells = []
        for regime in REGIMES:
            for metric in ("sa", "ra"):
                cells += [_fmt(v[f"{regime}_{metric}"], v[f"{regime}_{metric}_std"],
                               v[f"{regime}_n"]), _interval(v[f"{regime}_{metric}_diff"])]
            cells.append(_mark(v[regime]))
        lines.append(f"| {v['ticket']} | {v['method']} | {100 * v['sparsity']:.2f}% | "
                     f"{' | '.join(cells)} | {_double(v['double_win'])} |")
    return lines


def _versus_table(group):
    """IMP minus each baseline at equal sparsity, with intervals and what they show."""
    if not group.get("versus"):
        return []
    lines = ["", "IMP minus baseline at equal sparsity (points; same test examples and seeds; "
             "95 % CI):", "", "| baseline | sparsity | std ΔSA | std ΔRA | adv ΔSA | adv ΔRA |",
             "|---|---|---|---|---|---|"]
    for entry in group["versus"]:
        cells = [_versus_cell(entry[f"{regime}_{metric}_diff"]) for regime in REGIMES
                 for metric in ("sa", "ra")]
        against = "" if entry["versus"] == "imp" else f", vs {entry['versus']}"
        lines.append(f"| {entry['method']} ({entry['ticket']}{against}) | "
                     f"{100 * entry['sparsity']:.2f}% | " + " | ".join(cells) + " |")
    return lines


def _structured_table(group):
    """N:M IMP tickets next to the unstructured IMP ticket of nearest sparsity."""
    if not group.get("structured"):
        return []
    by_ticket = {(v["method"], v["ticket"]): v for v in group["tickets"]}
    lines = ["", "N:M tickets next to the unstructured IMP ticket of nearest sparsity (an "
             "N:M ticket keeps N of every M consecutive input-channel weights of each "
             "conv whose input channels are a multiple of M -- 2:4 is 50 % of those by "
             "construction; the stem conv stays dense, so the overall sparsity is just "
             "under 50 %). Δ = N:M minus unstructured (points; same test examples and "
             "seeds; 95 % CI):", "",
             "| N:M ticket | sparsity | double-win | unstructured | sparsity | double-win "
             "| std ΔSA | std ΔRA | adv ΔSA | adv ΔRA |", "|" + "---|" * 10]
    for entry in group["structured"]:
        ours = by_ticket.get((entry["method"], entry["ticket"]), {})
        theirs = by_ticket.get(("imp", entry["unstructured"]), {})
        cells = [_interval(entry[f"{regime}_{metric}_diff"]) for regime in REGIMES
                 for metric in ("sa", "ra")]
        lines.append(f"| {entry['ticket']} ({entry['method']}) | "
                     f"{100 * entry['sparsity']:.2f}% | {_double(ours.get('double_win'))} | "
                     f"{entry['unstructured']} | {100 * entry['unstructured_sparsity']:.2f}% | "
                     f"{_double(theirs.get('double_win'))} | " + " | ".join(cells) + " |")
    return lines


def _versus_cell(difference):
    if difference is None:
        return "–"
    if difference.low > 0:
        return f"{_interval(difference)} IMP better"
    if difference.high < 0:
        return f"{_interval(difference)} baseline better"
    return _interval(difference)


def _why_not(group, rule):
    """": <ticket> fails on <regime> <metric> <interval>; ..." -- for each IMP ticket, the
    comparison that rules it out most clearly (the lowest upper end among its "no"s)."""
    reasons = []
    for v in group["tickets"]:
        if v["method"] != "imp" or v["double_win"] != verdicts.NO:
            continue
        failed = [(d.high, regime, metric, d) for regime in REGIMES for metric in ("sa", "ra")
                  if (d := v[f"{regime}_{metric}_diff"]) is not None and d.verdict == verdicts.NO]
        if failed:
            _, regime, metric, d = min(failed)
            reasons.append(f"{v['ticket']} ({100 * v['sparsity']:.2f}%) is more than "
                           f"{rule.margin:g} point{'s' if rule.margin != 1 else ''} worse in "
                           f"{regime} {metric.upper()}, {_interval(d)}")
    return (": " + "; ".join(reasons) + ".") if reasons else "."


def _unsettled(group, rule):
    """Why the inconclusive verdicts are so, and what would settle each."""
    lines = []
    for v in group["tickets"]:
        if v["double_win"] != verdicts.INCONCLUSIVE:
            continue
        parts = []
        for regime in REGIMES:
            for metric in ("sa", "ra"):
                difference = v[f"{regime}_{metric}_diff"]
                if difference is not None and difference.verdict == verdicts.INCONCLUSIVE:
                    parts.append(f"{regime} {metric.upper()} {_interval(difference)} contains "
                                 f"-{rule.margin:g}; {difference.settle(rule.margin)}")
        lines.append(f"* Inconclusive: {v['ticket']} ({v['method']}, "
                     f"{100 * v['sparsity']:.2f}%): " + "; ".join(parts) + ".")
    return [""] + lines if lines else []


def compare_audits(audits, rule: verdicts.Rule, load):
    """Audited tickets against their audited dense model (same pre-training, dataset,
    rate and regime), example by example: [(ticket row, dense row, {"pgd": Difference,
    "autoattack": Difference})] -- does the ticket still match under the stronger attack?"""
    dense = {(_group_key(r), r.regime): (r, result) for r, result in audits
             if r.ticket == "dense"}
    pairs, out = [], []
    for row, result in audits:
        found = dense.get((_group_key(row), row.regime))
        if row.ticket == "dense" or found is None or "records" not in result \
                or "records" not in found[1]:
            continue
        ours, theirs = load(result["records"]), load(found[1]["records"])
        records.check_comparable(ours, theirs, row.cell, found[0].cell)
        pairs.append((row, found[0], {attack: verdicts.Comparison(
            ours.correct[attack], theirs.correct[attack]) for attack in ("pgd", "autoattack")}))
    if not pairs:
        return out
    flat = [c for _, _, comparisons in pairs for c in comparisons.values()]
    differences = iter(verdicts.paired_bootstrap(flat, rule))
    for row, dense_row, comparisons in pairs:
        out.append((row, dense_row, {attack: next(differences) for attack in comparisons}))
    return out


def _audit_section(audits, audit_differences):
    versions = sorted({result.get("version", "fast") for _, result in audits})
    attacks = [a for a in AUDIT_ATTACKS if any(a in result["ra"] for _, result in audits)]
    lines = ["## Robustness audit", "",
             "Each model attacked on the test split at its evaluation eps with its own PGD "
             "and AutoAttack (" + "; ".join(_version_text(v) for v in versions) + "). "
             "Columns after PGD: the RA left after each attack of the sequence, each run "
             "only on the examples the "
             "earlier ones left correctly classified; worst case: robust to AutoAttack and "
             "to PGD.", "",
             "| pre-training | dataset | data rate | ticket | regime | seed | examples | "
             + " | ".join(AUDIT_NAMES[a] for a in attacks) + " | AutoAttack | worst case | "
             "gradient masking? |",
             "|" + "---|" * (10 + len(attacks))]
    warnings = []
    for row, result in audits:
        ra = result["ra"]
        flag = "**possible**" if result["gradient_masking_suspected"] else "no"
        lines.append(
            f"| {row.pretraining} | {row.dataset} | {row.data_rate:g} | {row.ticket} | "
            f"{row.regime} | {row.seed} | {result['examples']} | "
            + " | ".join(_fmt(ra.get(a)) for a in attacks)
            + f" | {_fmt(result.get('autoattack_ra'))} | {_fmt(result['worst_case_ra'])} "
            f"| {flag} |")
        for reason in result["reasons"]:
            warnings.append(f"* Warning ({row.pretraining}, {row.ticket}, "
                            f"{row.regime}): {reason} -- RA measured by gradient-based "
                            "attacks may overstate robustness (gradient masking).")
    lines += [""] + warnings + ([""] if warnings else [])
    for row, dense_row, differences in audit_differences:
        pgd, auto = differences["pgd"], differences["autoattack"]
        lines += [f"What the audit changes for {row.ticket} ({row.pretraining} pre-training, "
                  f"{row.dataset} at data rate {row.data_rate:g}, {row.regime} transfer, seed "
                  f"{row.seed}) against the dense model (seed {dense_row.seed}) on the same {auto.examples} test examples: RA "
                  f"difference {_interval(pgd)} under PGD ({pgd.verdict}), {_interval(auto)} "
                  f"under AutoAttack ({auto.verdict}).", ""]
    return lines


def _version_text(version):
    if version == "standard":
        return "standard version: APGD-CE, APGD-T, FAB-T and Square, the RobustBench protocol"
    return "fast version, weaker than the standard one: APGD-CE, APGD-DLR and Square"
