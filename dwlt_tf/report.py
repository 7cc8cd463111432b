"""The study's answer: which tickets are double-win, tables and SA/RA-vs-sparsity plots.

Definitions (the paper's): for one pre-training, downstream dataset and data rate, a
ticket is *matching* under a transfer regime (standard or adversarial) when its test SA
and its test RA are each no worse than the dense model's under the same regime; it is
*double-win* when it is matching under both regimes. SA is the test SA of the best-SA
checkpoint and RA the test RA of the best-RA checkpoint, both selected on validation as
the reference does. With several seeds, SA and RA are means over seeds (sample standard
deviations alongside), and "no worse" follows the configured rule:

* `tolerance`: mean >= dense mean - `tolerance` points (0: strictly no worse);
* `std`: mean >= dense mean - the dense model's standard deviation over seeds (the
  lottery-ticket literature's "within one standard deviation"; one seed: tolerance 0).

Tickets of every pruning method (`imp`, and the `omp` / `random` baselines at the same
sparsities) get verdicts; the IMP tickets are the study's tickets, the others tell
whether IMP beats one-shot and random pruning at equal sparsity.
"""
import collections
import csv
import io
import math
import os

import matplotlib

matplotlib.use("Agg")  # files only; no display
import matplotlib.pyplot as plt  # noqa: E402

from dwlt_tf import files  # noqa: E402

REGIMES = ("standard", "adversarial")
RULES = ("tolerance", "std")
METHODS = ("imp", "omp", "random")
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


def mean_std(values):
    """Mean and sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _aggregate(members):
    """{"sa", "sa_std", "ra", "ra_std", "n"} over the rows of one ticket and regime."""
    sa, sa_std = mean_std([r.sa for r in members])
    ra, ra_std = mean_std([r.ra for r in members])
    return {"sa": sa, "sa_std": sa_std, "ra": ra, "ra_std": ra_std, "n": len(members)}


def analyze(rows, tolerance=0.0, rule="tolerance"):
    """Matching / double-win per group and pruning method. Returns {group: summary}."""
    if rule not in RULES:
        raise ValueError(f"Unknown matching rule {rule!r}; choose one of {RULES}")
    groups = collections.defaultdict(list)
    for row in rows:
        groups[_group_key(row)].append(row)
    summary = {}
    for key, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        by = collections.defaultdict(list)
        for r in members:
            by[(_method(r), r.ticket, r.regime)].append(r)
        dense = {regime: _aggregate(by[("dense", "dense", regime)]) for regime in REGIMES
                 if by.get(("dense", "dense", regime))}
        tickets = sorted({(_method(r), r.ticket, r.sparsity) for r in members
                          if r.ticket != "dense"},
                         key=lambda t: (t[2], METHODS.index(t[0]) if t[0] in METHODS else 9))
        verdicts = []
        for method, ticket, sparsity in tickets:
            verdict = {"method": method, "ticket": ticket, "sparsity": sparsity}
            for regime in REGIMES:
                rows_here = by.get((method, ticket, regime))
                stats = _aggregate(rows_here) if rows_here else None
                base = dense.get(regime)
                matching = None
                if stats and base:
                    slack_sa = tolerance if rule == "tolerance" else base["sa_std"]
                    slack_ra = tolerance if rule == "tolerance" else base["ra_std"]
                    matching = (stats["sa"] >= base["sa"] - slack_sa
                                and stats["ra"] >= base["ra"] - slack_ra)
                verdict[regime] = matching
                for field in ("sa", "sa_std", "ra", "ra_std", "n"):
                    verdict[f"{regime}_{field}"] = stats[field] if stats else None
            verdict["double_win"] = all(verdict[r] for r in REGIMES)
            verdicts.append(verdict)
        by_method = {}
        for method in sorted({v["method"] for v in verdicts}):
            double = [v for v in verdicts if v["method"] == method and v["double_win"]]
            by_method[method] = max(double, key=lambda v: v["sparsity"]) if double else None
        summary[key] = {"dense": dense, "tickets": verdicts,
                        "sparsest_double_win": by_method.get("imp"),
                        "sparsest_double_win_by_method": by_method}
    return summary


def _best_seed(rows):
    """Among one ticket's seeds, the run to deploy: best validation RA (ties: lowest seed)."""
    return max(rows, key=lambda r: (r.val_ra or 0.0, -r.seed))


def choose_export(rows, summary):
    """The ticket to deploy: the sparsest double-win IMP ticket (ties: higher adversarial
    RA); without any, the IMP ticket with the best adversarial RA. Of its seeds, the run
    with the best validation RA. Returns (row, reason)."""
    candidates = []
    for key, group in summary.items():
        if group["sparsest_double_win"]:
            v = group["sparsest_double_win"]
            candidates.append((v["sparsity"], v["adversarial_ra"] or 0.0, key, v["ticket"]))
    adversarial = [r for r in rows if r.regime == "adversarial" and _method(r) == "imp"]
    if candidates:
        sparsity, _, key, ticket = max(candidates)
        row = _best_seed([r for r in adversarial
                          if _group_key(r) == key and r.ticket == ticket])
        return row, (f"sparsest double-win ticket ({ticket}, {100 * sparsity:.2f}% sparse, "
                     f"{key[0]} pre-training, {key[1]} at data rate {key[2]})")
    if not adversarial:
        return None, "no adversarially transferred ticket to export"
    best = max(adversarial, key=lambda r: (r.ra, r.sa))
    row = _best_seed([r for r in adversarial
                      if _group_key(r) == _group_key(best) and r.ticket == best.ticket])
    key = _group_key(row)
    return row, (f"the ticket with the best adversarial RA ({row.ticket}, "
                 f"{100 * row.sparsity:.2f}% sparse, {key[0]} pre-training, {key[1]} at data "
                 f"rate {key[2]}; no ticket is double-win)")


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


def _mark(flag):
    return "–" if flag is None else ("yes" if flag else "no")


def _rule_text(tolerance, rule):
    if rule == "std":
        return ("SA and RA (means over seeds) each at least the dense model's mean minus its "
                "standard deviation over seeds, under the same transfer regime")
    return (f"SA and RA (means over seeds) each within {tolerance:g} points of the dense "
            "model's under the same transfer regime")


def markdown(rows, summary, tolerance, export_note=None, rule="tolerance", seeds=None,
             audits=None, status=None):
    """The report. `audits`: [(row, AuditResult-like dict)] of audited models; `status`: a
    line under the title (e.g. that the results are partial)."""
    seeds = sorted({r.seed for r in rows}) if seeds is None else list(seeds)
    lines = ["# Double-win lottery tickets: study report", ""] + ([status, ""] if status else [])
    lines += [
             f"Matching (rule `{rule}`): {_rule_text(tolerance, rule)}; double-win: matching "
             "under standard *and* adversarial transfer. SA = test SA of the best-SA "
             "checkpoint, RA = test RA of the best-RA checkpoint (both selected on "
             "validation).", "",
             f"Seeds: {', '.join(str(s) for s in seeds)}" + (
                 " (values: mean ± sample standard deviation over seeds)." if len(seeds) > 1
                 else " (one seed per transfer: no spread to report)."), ""]
    attacks = sorted({r.ra_attack for r in rows if r.ra_attack})
    if attacks:
        lines += ["RA measured with: " + "; ".join(attacks) + ".", ""]
    for (pretraining, dataset, rate), group in summary.items():
        lines += [f"## {pretraining} pre-training → {dataset}, data rate {rate:g}", "",
                  "| ticket | method | sparsity | std SA | std RA | adv SA | adv RA | "
                  "std match | adv match | double-win |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        dense = group["dense"]
        cells = []
        for regime in REGIMES:
            d = dense.get(regime, {})
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
                f"{'**yes**' if v['double_win'] else 'no'} |")
        best = group["sparsest_double_win"]
        lines += ["", (f"Sparsest double-win ticket: **{best['ticket']}** "
                       f"({100 * best['sparsity']:.2f}% sparse)." if best
                       else "No double-win ticket in this setting.")]
        baselines = {m: v for m, v in group["sparsest_double_win_by_method"].items()
                     if m != "imp"}
        if baselines:
            lines.append("Sparsest double-win baseline: " + "; ".join(
                f"{m}: " + (f"{v['ticket']} ({100 * v['sparsity']:.2f}%)" if v else "none")
                for m, v in sorted(baselines.items())) + ".")
        lines.append("")
    if audits:
        lines += _audit_section(audits)
    if export_note:
        lines += ["## Export", "", export_note, ""]
    return "\n".join(lines)


def _audit_section(audits):
    versions = sorted({result.get("version", "fast") for _, result in audits})
    attacks = [a for a in AUDIT_ATTACKS if any(a in result["ra"] for _, result in audits)]
    lines = ["## Robustness audit", "",
             "Each model attacked on the test split at its evaluation eps with its own PGD "
             "and AutoAttack (" + "; ".join(_version_text(v) for v in versions) + "). "
             "Columns after PGD: the RA left after each attack of the sequence, each run "
             "only on the examples the "
             "earlier ones left correctly classified; worst case: robust to AutoAttack and "
             "to PGD.", "",
             "| pre-training | dataset | ticket | regime | seed | examples | "
             + " | ".join(AUDIT_NAMES[a] for a in attacks) + " | AutoAttack | worst case | "
             "gradient masking? |",
             "|" + "---|" * (9 + len(attacks))]
    warnings = []
    for row, result in audits:
        ra = result["ra"]
        flag = "**possible**" if result["gradient_masking_suspected"] else "no"
        lines.append(
            f"| {row.pretraining} | {row.dataset} | {row.ticket} | {row.regime} | "
            f"{row.seed} | {result['examples']} | "
            + " | ".join(_fmt(ra.get(a)) for a in attacks)
            + f" | {_fmt(result.get('autoattack_ra'))} | {_fmt(result['worst_case_ra'])} "
            f"| {flag} |")
        for reason in result["reasons"]:
            warnings.append(f"* Warning ({row.pretraining}, {row.ticket}, "
                            f"{row.regime}): {reason} -- RA measured by gradient-based "
                            "attacks may overstate robustness (gradient masking).")
    return lines + [""] + warnings + ([""] if warnings else [])


def _version_text(version):
    if version == "standard":
        return "standard version: APGD-CE, APGD-T, FAB-T and Square, the RobustBench protocol"
    return "fast version, weaker than the standard one: APGD-CE, APGD-DLR and Square"


def plot(rows, summary, workdir):
    """One PNG per group: SA and RA versus sparsity per method and regime (error bars:
    standard deviation over seeds), the dense model as reference lines."""
    out_dir = os.path.join(workdir, "plots")
    paths = []
    styles = {"imp": "o-", "omp": "s--", "random": "^:"}
    for (pretraining, dataset, rate), group in summary.items():
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
        for ax, metric in zip(axes, ("sa", "ra")):
            for regime, color in zip(REGIMES, ("tab:blue", "tab:red")):
                for method in sorted({v["method"] for v in group["tickets"]}):
                    points = sorted(
                        (100 * v["sparsity"], v[f"{regime}_{metric}"],
                         v[f"{regime}_{metric}_std"]) for v in group["tickets"]
                        if v["method"] == method and v[f"{regime}_{metric}"] is not None)
                    if points:
                        x, y, err = zip(*points)
                        ax.errorbar(x, y, yerr=err, fmt=styles.get(method, "o-"), color=color,
                                    capsize=3, label=f"{method}, {regime}")
                dense = group["dense"].get(regime)
                if dense:
                    ax.axhline(dense[metric], color=color, linestyle="--",
                               label=f"dense, {regime}")
                    if dense[f"{metric}_std"]:
                        ax.axhspan(dense[metric] - dense[f"{metric}_std"],
                                   dense[metric] + dense[f"{metric}_std"], color=color,
                                   alpha=0.1)
            ax.set_xlabel("sparsity (%)")
            ax.set_ylabel(f"test {metric.upper()} (%)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{pretraining} pre-training → {dataset} (data rate {rate:g})")
        fig.tight_layout()
        path = os.path.join(out_dir, f"{pretraining}_{dataset}_{rate:g}.png")
        image = io.BytesIO()
        fig.savefig(image, format="png", dpi=100)
        plt.close(fig)
        files.update_bytes(path, image.getvalue())  # the same plot: nothing written
        paths.append(path)
    return paths
