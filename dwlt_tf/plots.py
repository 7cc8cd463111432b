"""The study's plots: SA and RA versus sparsity, and the paired differences with intervals.

One PNG per (pre-training, dataset, data rate): the top row shows test SA and RA of every
ticket (mean over seeds, error bars one standard deviation) per pruning method and
transfer regime, the dense model as reference lines; with the `paired` rule a second row
shows each difference ticket - dense with its confidence interval, a line at 0 and one
at -margin (an interval wholly above it: matching; wholly below: not). Written only when
the image changes (`files.update_bytes`).
"""
import io
import os

import matplotlib

matplotlib.use("Agg")  # files only; no display
import matplotlib.pyplot as plt  # noqa: E402

from dwlt_tf import files, verdicts  # noqa: E402

REGIMES = ("standard", "adversarial")
COLORS = {"standard": "tab:blue", "adversarial": "tab:red"}
# 2:4 tickets are single points (50 % by construction): stars, beside the curves.
STYLES = {"imp": "o-", "omp": "s--", "random": "^:", "imp_2by4": "*", "omp_2by4": "P"}
# Methods side by side at one sparsity: a small horizontal offset keeps bars apart.
_OFFSET = {"imp": 0.0, "omp": 0.6, "random": 1.2, "imp_2by4": -0.6, "omp_2by4": -1.2}


def plot(summary, workdir, rule: verdicts.Rule):
    """Writes `<workdir>/plots/<pretraining>_<dataset>_<rate>.png`; returns the paths."""
    paths = []
    paired = rule.rule == "paired"
    for (pretraining, dataset, rate), group in summary.items():
        fig, axes = plt.subplots(2 if paired else 1, 2, figsize=(11, 8 if paired else 4),
                                 sharex=True, squeeze=False)
        for ax, metric in zip(axes[0], ("sa", "ra")):
            _values(ax, group, metric)
        if paired:
            for ax, metric in zip(axes[1], ("sa", "ra")):
                _differences(ax, group, metric, rule)
        for ax in axes[-1]:
            ax.set_xlabel("sparsity (%)")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{pretraining} pre-training → {dataset} (data rate {rate:g})")
        fig.tight_layout()
        path = os.path.join(workdir, "plots", f"{pretraining}_{dataset}_{rate:g}.png")
        image = io.BytesIO()
        fig.savefig(image, format="png", dpi=100)
        plt.close(fig)
        files.update_bytes(path, image.getvalue())  # the same plot: nothing written
        paths.append(path)
    return paths


def _methods(group):
    return sorted({v["method"] for v in group["tickets"]})


def _values(ax, group, metric):
    for regime in REGIMES:
        color = COLORS[regime]
        for method in _methods(group):
            points = sorted((100 * v["sparsity"], v[f"{regime}_{metric}"],
                             v[f"{regime}_{metric}_std"]) for v in group["tickets"]
                            if v["method"] == method and v[f"{regime}_{metric}"] is not None)
            if points:
                x, y, err = zip(*points)
                ax.errorbar(x, y, yerr=err, fmt=STYLES.get(method, "o-"), color=color,
                            capsize=3, label=f"{method}, {regime}")
        dense = group["dense"].get(regime)
        if dense:
            ax.axhline(dense[metric], color=color, linestyle="--", label=f"dense, {regime}")
            if dense[f"{metric}_std"]:
                ax.axhspan(dense[metric] - dense[f"{metric}_std"],
                           dense[metric] + dense[f"{metric}_std"], color=color, alpha=0.1)
    ax.set_ylabel(f"test {metric.upper()} (%)")
    ax.grid(alpha=0.3)


def _differences(ax, group, metric, rule):
    for regime in REGIMES:
        for method in _methods(group):
            points = sorted((100 * v["sparsity"] + _OFFSET.get(method, 0.0), d.estimate,
                             d.estimate - d.low, d.high - d.estimate)
                            for v in group["tickets"] if v["method"] == method
                            and (d := v[f"{regime}_{metric}_diff"]) is not None)
            if points:
                x, y, below, above = zip(*points)
                ax.errorbar(x, y, yerr=[below, above], fmt=STYLES.get(method, "o-"),
                            color=COLORS[regime], capsize=3, label=f"{method}, {regime}")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.axhline(-rule.margin, color="gray", linestyle="--",
               label=f"-margin ({rule.margin:g} points)")
    ax.set_ylabel(f"Δ{metric.upper()} ticket - dense (points, "
                  f"{100 * rule.confidence:g} % CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
