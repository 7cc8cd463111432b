"""The study's answer: which tickets are double-win, tables and SA/RA-vs-sparsity plots.

Definitions (the paper's): for one pre-training, downstream dataset and data rate, a
ticket is *matching* under a transfer regime (standard or adversarial) when its test
SA and its test RA are each no worse than the dense model's under the same regime by
more than `tolerance` (percentage points, default 0). A ticket is *double-win* when it
is matching under both regimes. SA is the test SA of the best-SA checkpoint and RA the
test RA of the best-RA checkpoint, both selected on validation as the reference does.
"""
import collections
import csv
import io
import os

import matplotlib

matplotlib.use("Agg")  # files only; no display
import matplotlib.pyplot as plt  # noqa: E402

from dwlt_tf import files  # noqa: E402

REGIMES = ("standard", "adversarial")
COLUMNS = ("pretraining", "dataset", "data_rate", "regime", "ticket", "sparsity", "sa", "ra",
           "sa_ckpt_test_ra", "ra_ckpt_test_sa", "val_sa", "val_ra", "ra_attack", "cell")


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
    return row["pretraining"], row["dataset"], row["data_rate"]


def analyze(rows, tolerance=0.0):
    """Matching / double-win per group. Returns {group: summary dict}."""
    groups = collections.defaultdict(list)
    for row in rows:
        groups[_group_key(row)].append(row)
    summary = {}
    for key, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        dense = {r["regime"]: r for r in members if r["ticket"] == "dense"}
        tickets = sorted({(r["ticket"], r["sparsity"]) for r in members if r["ticket"] != "dense"},
                         key=lambda t: t[1])
        verdicts = []
        for ticket, sparsity in tickets:
            verdict = {"ticket": ticket, "sparsity": sparsity}
            for regime in REGIMES:
                row = next((r for r in members
                            if r["ticket"] == ticket and r["regime"] == regime), None)
                base = dense.get(regime)
                matching = None
                if row is not None and base is not None:
                    matching = (row["sa"] >= base["sa"] - tolerance
                                and row["ra"] >= base["ra"] - tolerance)
                verdict[regime] = matching
                verdict[f"{regime}_sa"] = row["sa"] if row else None
                verdict[f"{regime}_ra"] = row["ra"] if row else None
            verdict["double_win"] = all(verdict[r] for r in REGIMES)
            verdicts.append(verdict)
        double = [v for v in verdicts if v["double_win"]]
        summary[key] = {
            "dense": {r: {"sa": d["sa"], "ra": d["ra"]} for r, d in dense.items()},
            "tickets": verdicts,
            "sparsest_double_win": max(double, key=lambda v: v["sparsity"]) if double else None,
        }
    return summary


def choose_export(rows, summary):
    """The ticket to deploy: the sparsest double-win one (ties: higher adversarial RA);
    without any, the ticket with the best adversarial RA. Returns (row, reason)."""
    candidates = []
    for key, group in summary.items():
        if group["sparsest_double_win"]:
            v = group["sparsest_double_win"]
            candidates.append((v["sparsity"], v["adversarial_ra"] or 0.0, key, v["ticket"]))
    adversarial = [r for r in rows if r["regime"] == "adversarial" and r["ticket"] != "dense"]
    if candidates:
        sparsity, _, key, ticket = max(candidates)
        row = next(r for r in adversarial if _group_key(r) == key and r["ticket"] == ticket)
        return row, (f"sparsest double-win ticket ({ticket}, {100 * sparsity:.2f}% sparse, "
                     f"{key[0]} pre-training, {key[1]} at data rate {key[2]})")
    if not adversarial:
        return None, "no adversarially transferred ticket to export"
    row = max(adversarial, key=lambda r: (r["ra"], r["sa"]))
    return row, (f"no ticket is double-win; exported the ticket with the best adversarial "
                 f"RA instead ({row['ticket']}, {100 * row['sparsity']:.2f}% sparse)")


def write_tables(rows, workdir):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    files.write_text(os.path.join(workdir, "results.csv"), buffer.getvalue())
    files.write_json(os.path.join(workdir, "results.json"), rows)


def _fmt(value):
    return "–" if value is None else f"{value:.2f}"


def markdown(rows, summary, tolerance, export_note=None):
    lines = ["# Double-win lottery tickets: study report", "",
             f"Matching: SA and RA each within {tolerance:g} points of the dense model under "
             "the same transfer regime; double-win: matching under standard *and* adversarial "
             "transfer. SA = test SA of the best-SA checkpoint, RA = test RA of the best-RA "
             "checkpoint (both selected on validation).", ""]
    attacks = sorted({r.get("ra_attack") for r in rows if r.get("ra_attack")})
    if attacks:
        lines += ["RA measured with: " + "; ".join(attacks) + ".", ""]
    for (pretraining, dataset, rate), group in summary.items():
        lines += [f"## {pretraining} pre-training → {dataset}, data rate {rate:g}", "",
                  "| ticket | sparsity | std SA | std RA | adv SA | adv RA | std match | "
                  "adv match | double-win |", "|---|---|---|---|---|---|---|---|---|"]
        dense = group["dense"]
        lines.append(
            f"| dense | 0.00% | {_fmt(dense.get('standard', {}).get('sa'))} | "
            f"{_fmt(dense.get('standard', {}).get('ra'))} | "
            f"{_fmt(dense.get('adversarial', {}).get('sa'))} | "
            f"{_fmt(dense.get('adversarial', {}).get('ra'))} | | | |")
        for v in group["tickets"]:
            def mark(flag):
                return "–" if flag is None else ("yes" if flag else "no")
            lines.append(
                f"| {v['ticket']} | {100 * v['sparsity']:.2f}% | {_fmt(v['standard_sa'])} | "
                f"{_fmt(v['standard_ra'])} | {_fmt(v['adversarial_sa'])} | "
                f"{_fmt(v['adversarial_ra'])} | {mark(v['standard'])} | "
                f"{mark(v['adversarial'])} | {'**yes**' if v['double_win'] else 'no'} |")
        best = group["sparsest_double_win"]
        lines += ["", (f"Sparsest double-win ticket: **{best['ticket']}** "
                       f"({100 * best['sparsity']:.2f}% sparse)." if best
                       else "No double-win ticket in this setting."), ""]
    if export_note:
        lines += ["## Export", "", export_note, ""]
    return "\n".join(lines)


def plot(rows, summary, workdir):
    """One PNG per group: SA and RA versus sparsity, dense model as reference lines."""
    out_dir = os.path.join(workdir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for (pretraining, dataset, rate), group in summary.items():
        members = [r for r in rows if _group_key(r) == (pretraining, dataset, rate)]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
        for ax, metric in zip(axes, ("sa", "ra")):
            for regime, color in zip(REGIMES, ("tab:blue", "tab:red")):
                pts = sorted((100 * r["sparsity"], r[metric]) for r in members
                             if r["regime"] == regime and r["ticket"] != "dense")
                if pts:
                    ax.plot(*zip(*pts), "o-", color=color, label=f"tickets, {regime}")
                dense = group["dense"].get(regime)
                if dense:
                    ax.axhline(dense[metric], color=color, linestyle="--",
                               label=f"dense, {regime}")
            ax.set_xlabel("sparsity (%)")
            ax.set_ylabel(f"test {metric.upper()} (%)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{pretraining} pre-training → {dataset} (data rate {rate:g})")
        fig.tight_layout()
        path = os.path.join(out_dir, f"{pretraining}_{dataset}_{rate:g}.png")
        fig.savefig(path + ".tmp.png", dpi=100)
        os.replace(path + ".tmp.png", path)
        plt.close(fig)
        paths.append(path)
    return paths
