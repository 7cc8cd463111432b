"""Verdicts of the budget replication next to the full one's, from their summary.json files.

    python docs/results/cifar_budget/compare_with_full.py runs/cifar/summary.json \
        runs/cifar_budget/summary.json > docs/results/cifar_budget/comparison.md

For every ticket row (pre-training, data rate, method, sparsity) and each of its four
differences to the dense model (standard / adversarial transfer, SA / RA) and its
double-win verdict: both runs' verdicts, whether they agree, and whether the full run's
estimate lies inside the budget run's interval. Rows are matched by pre-training, data
rate, method and sparsity (the dataset labels differ only in the test split's size).
"""
import json
import sys

DIFFS = ("standard_sa", "standard_ra", "adversarial_sa", "adversarial_ra")


def _rows(path):
    rows = {}
    with open(path) as f:
        for group, summary in json.load(f).items():
            pretraining, _, rate = group.split("|")
            for ticket in summary["tickets"]:
                key = (pretraining, float(rate), ticket["method"], round(ticket["sparsity"], 4))
                rows[key] = ticket
    return rows


def _interval(diff):
    return f"{diff['estimate']:+.2f} [{diff['low']:+.2f}, {diff['high']:+.2f}]"


def main(full_path, budget_path):
    full, budget = _rows(full_path), _rows(budget_path)
    missing = sorted(set(full) ^ set(budget))
    if missing:
        raise SystemExit(f"rows in only one of the two runs: {missing}")
    agree = total = inside = 0
    widths = []
    lines = ["| pre-training | rate | method | sparsity | difference | full | budget | same "
             "verdict | full estimate in budget interval |", "|---" * 9 + "|"]
    for key in sorted(full):
        pretraining, rate, method, sparsity = key
        for name in DIFFS + ("double_win",):
            if name == "double_win":
                a, b = full[key]["double_win"], budget[key]["double_win"]
                cells, within = (a, b), ""
            else:
                fa, fb = full[key][f"{name}_diff"], budget[key][f"{name}_diff"]
                a, b = fa["verdict"], fb["verdict"]
                cells = (f"{_interval(fa)} {a}", f"{_interval(fb)} {b}")
                hit = fb["low"] <= fa["estimate"] <= fb["high"]
                inside += hit
                within = "yes" if hit else "**no**"
                widths.append((fb["high"] - fb["low"]) / (fa["high"] - fa["low"]))
            total += 1
            agree += a == b
            lines.append(f"| {pretraining} | {rate} | {method} | {100 * sparsity:.2f}% | "
                         f"{name.replace('_', ' ')} | {cells[0]} | {cells[1]} | "
                         f"{'yes' if a == b else '**no**'} | {within} |")
    widths.sort()
    print(f"Verdicts: {agree} of {total} agree (differences and double-win). Full run's "
          f"estimate inside the budget run's 95 % interval: {inside} of {len(widths)}. "
          f"Budget interval width / full interval width: median {widths[len(widths) // 2]:.2f} "
          f"(range {widths[0]:.2f}-{widths[-1]:.2f}).\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: compare_with_full.py FULL/summary.json BUDGET/summary.json")
    main(*sys.argv[1:])
