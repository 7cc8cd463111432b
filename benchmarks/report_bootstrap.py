r"""The paired-bootstrap report at paper scale: seconds to judge every ticket of `paper`.

Builds the cell graph of `configs/study.py:paper` (3 pre-trainings on generated
converted-weights records; CIFAR-10, CIFAR-100, SVHN at 3 data rates; 5 IMP tickets with
OMP and random baselines at each; 2 regimes; 3 seeds), gives every transfer cell a
generated per-example record of its test split's real size (CIFAR 10,000, SVHN 26,032
examples) written as `test_records.json`, then times what a study's assembly does with
them: `report.analyze` under the `paired` rule (reading every record, one vectorized
bootstrap) and `report.markdown`. Prints one JSON line.

  python benchmarks/report_bootstrap.py --resamples=2000
"""
import json
import os
import platform
import shutil
import tempfile
import time

from absl import app, flags

import cell_startup  # benchmarks/: the paper preset's converted-weights records
import dwlt_tf  # noqa: F401

FLAGS = flags.FLAGS
flags.DEFINE_integer("resamples", 2000, "Bootstrap resamples (report.resamples).")
flags.DEFINE_integer("repeats", 3, "Timed analyses (the median is reported).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_SIZES = {"cifar10": 10000, "cifar100": 10000, "svhn": 26032}


def _paper_spec(root):
    import importlib.util  # pylint: disable=import-outside-toplevel
    from dwlt_tf import study_spec  # pylint: disable=import-outside-toplevel
    spec = importlib.util.spec_from_file_location("study_config",
                                                  os.path.join(REPO, "configs", "study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("paper")
    for name, path in cell_startup.paper_weights(root).items():
        config.pretrainings[name].path = path
    config.report.resamples = FLAGS.resamples
    return study_spec.study_spec(config)


def _rows(spec, graph, workdir):
    """A TransferRow per transfer cell, each with a generated record on disk."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from dwlt_tf import records, stages  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    dense_truth = {}
    rows = []
    for cell in graph.of_kind("transfer"):
        n = TEST_SIZES[cell.dataset.name]
        group = (cell.pretraining, cell.dataset.label, cell.dataset.data_rate, cell.regime,
                 cell.seed)
        if group not in dense_truth:  # the dense model's outcomes, per group and seed
            dense_truth[group] = (rng.random(n) < 0.8, rng.random(n) < 0.4)
        clean, robust = (values.copy() for values in dense_truth[group])
        if cell.method != "dense":  # a ticket: some examples flip
            for values in (clean, robust):
                flip = rng.random(n) < 0.08
                values[flip] = ~values[flip]
        path = os.path.join(workdir, "cells", cell.address.replace(":", "_").replace("@", "_"))
        os.makedirs(path, exist_ok=True)
        kept = records.ExampleRecords("test", f"{n}:generated-{cell.dataset.name}", n, {
            "best_sa/clean": clean, "best_sa/robust": robust,
            "best_ra/clean": clean, "best_ra/robust": robust})
        records.write(path, kept)
        sparsity = 0.0 if cell.round is None else 1 - 0.8 ** cell.round
        rows.append(stages.TransferRow(
            pretraining=cell.pretraining, dataset=cell.dataset.label,
            data_rate=cell.dataset.data_rate, regime=cell.regime, method=cell.method,
            ticket=cell.ticket, sparsity=sparsity, seed=cell.seed,
            sa=kept.accuracy("best_sa/clean"), ra=kept.accuracy("best_ra/robust"),
            sa_ckpt_test_ra=None, ra_ckpt_test_sa=None, val_sa=0.0, val_ra=0.0,
            ra_attack="PGD-20", cell=os.path.relpath(path, workdir), address=cell.address,
            records=os.path.relpath(records.path_in(path), workdir)))
    return rows


def main(argv):
    del argv
    import numpy as np  # pylint: disable=import-outside-toplevel
    from dwlt_tf import cells, records, report  # pylint: disable=import-outside-toplevel
    root = tempfile.mkdtemp(prefix="report-bootstrap-")
    try:
        spec = _paper_spec(root)
        graph = cells.build(spec)
        workdir = os.path.join(root, "study")
        started = time.time()
        rows = _rows(spec, graph, workdir)
        generate_seconds = time.time() - started

        def load(relative):
            return records.read_file(os.path.join(workdir, relative))
        timings, summary = [], None
        for _ in range(FLAGS.repeats):
            started = time.perf_counter()
            summary = report.analyze(rows, spec.report, load)
            timings.append(time.perf_counter() - started)
        started = time.perf_counter()
        text = report.markdown(rows, summary, spec.report, seeds=spec.seeds)
        markdown_seconds = time.perf_counter() - started
        comparisons = sum(1 for group in summary.values() for v in group["tickets"]
                          for regime in report.REGIMES for metric in ("sa", "ra")
                          if v[f"{regime}_{metric}_diff"] is not None)
        verdict_counts = {}
        for group in summary.values():
            for v in group["tickets"]:
                verdict_counts[v["double_win"]] = verdict_counts.get(v["double_win"], 0) + 1
        print(json.dumps({
            "benchmark": "report_bootstrap", "cells": len(graph),
            "transfer_rows": len(rows), "groups": len(summary), "comparisons": comparisons,
            "resamples": FLAGS.resamples, "analyze_seconds_median": float(np.median(timings)),
            "analyze_seconds": timings, "markdown_seconds": markdown_seconds,
            "report_chars": len(text), "generate_records_seconds": generate_seconds,
            "double_win_verdicts": {str(k): v for k, v in verdict_counts.items()},
            "machine": platform.machine(), "cpus": os.cpu_count()}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
