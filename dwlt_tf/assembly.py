"""The study's assembly: results, report and plots from the finished cells.

`assemble` runs once every cell is finished: the transfer rows (with the audits of the
audited ones), the double-win analysis, `results.csv` / `results.json`, `report.md`,
`summary.json` and `plots/*.png`, each written only when its content changes.
`write_partial_report` writes `report.md` from the transfers finished so far, marked
partial, so that the first results are readable while the study runs.
"""
import dataclasses
import os
import time

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)

from dwlt_tf import cells, files, plots, report, stages

REPORT = "report.md"


def _ordered(ctx, rows):
    """Rows by pre-training, dataset, sparsity, method, ticket, regime, seed (the tables'
    order)."""
    names = list(ctx.spec.pretrainings)
    datasets = [d.label + f"@{d.data_rate:g}" for d in ctx.spec.datasets]
    methods = ["dense"] + list(report.METHODS)
    return sorted(rows, key=lambda r: (
        names.index(r.pretraining), datasets.index(f"{r.dataset}@{r.data_rate:g}"),
        r.sparsity, methods.index(r.method), r.ticket,
        report.REGIMES.index(r.regime), r.seed))


def finished_rows(ctx):
    """The rows of the transfer cells finished so far."""
    rows = []
    for cell in ctx.graph.of_kind("transfer"):
        try:
            rows.append(ctx.output(cell.address))
        except stages.NotReady:
            continue
    return _ordered(ctx, rows)


def _with_audits(ctx, rows):
    """Rows with their audit attached (the dense models of the first seed, the export)."""
    audits = {cell.target: ctx.output(cell.address) for cell in ctx.graph.of_kind("audit")}
    exported = ctx.output(cells.EXPORT) if cells.EXPORT in ctx.graph else None
    if exported and exported.get("address") and cells.EXPORT in audits:
        audits[exported["address"]] = audits.pop(cells.EXPORT)
    return [dataclasses.replace(r, audit=audits[r.address]) if audits.get(r.address) else r
            for r in rows]


def analyze(ctx, rows):
    """The double-win analysis of `rows` under the study's rule (`report.analyze`)."""
    return report.analyze(rows, ctx.spec.report, ctx.read_records)


def assemble(ctx):
    """Writes the study's outputs (module docstring). Returns (rows, summary)."""
    rows = _with_audits(ctx, _ordered(ctx, [ctx.output(c.address)
                                            for c in ctx.graph.of_kind("transfer")]))
    spec = ctx.spec
    summary = analyze(ctx, rows)
    note = ctx.output(cells.EXPORT)["note"] if cells.EXPORT in ctx.graph else None
    audits = [(r, r.audit) for r in rows if r.audit]
    report.write_tables(rows, ctx.workdir)
    plots.plot(summary, ctx.workdir, spec.report)
    text = report.markdown(rows, summary, spec.report, note, spec.seeds, audits,
                           audit_differences=report.compare_audits(audits, spec.report,
                                                                   ctx.read_records))
    files.update_text(os.path.join(ctx.workdir, REPORT), text)
    files.update_json(os.path.join(ctx.workdir, "summary.json"),
                      {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in summary.items()})
    return rows, summary


def write_partial_report(ctx):
    """report.md from the transfers finished so far, marked partial (nothing when none)."""
    rows = finished_rows(ctx)
    total = len(ctx.graph.of_kind("transfer"))
    if not rows:
        return
    spec = ctx.spec
    summary = analyze(ctx, rows)
    status = (f"**Partial results** ({time.strftime('%Y-%m-%d %H:%M:%S')}): {len(rows)} of "
              f"{total} transfers finished; verdicts can change until the study is complete "
              "(export and audit follow).")
    text = report.markdown(rows, summary, spec.report, None, spec.seeds, status=status)
    files.update_text(os.path.join(ctx.workdir, REPORT), text)
