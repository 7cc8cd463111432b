r"""Per-stage wall times of a finished study, from its cells' own records.

Every computed cell leaves `cell.json` (who computed it, when, in how many seconds). This
sums them per stage -- pre-training, IMP, baselines, transfers by regime and data rate,
export, audits -- and prints one JSON line: per stage the number of cells, their total
and mean seconds, and the study's span (first start to last finish) and total compute.
With several processes sharing the workdir, the compute total exceeds the span.

  python benchmarks/study_stages.py --config=configs/study.py:cifar_jpeg --workdir=runs/cifar
"""
import collections
import datetime
import json
import os
import platform

from absl import app, flags
from ml_collections import config_flags

import dwlt_tf  # noqa: F401

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The study's config (configs/study.py:...).")
flags.DEFINE_string("workdir", None, "The study's workdir.")
flags.mark_flags_as_required(["config", "workdir"])


def _stage(cell):
    if cell.kind == "transfer":
        return f"transfer:{cell.regime}@{cell.dataset.data_rate:g}"
    if cell.kind == "pretrain":
        return f"pretrain:{cell.pretraining}"
    if cell.kind == "imp":
        return f"imp:{cell.pretraining}"
    if cell.kind == "audit":
        return "audit:export" if cell.target == "export" else f"audit:dense:{cell.target.split(':')[-2]}"
    return cell.kind


def main(argv):
    del argv
    from dwlt_tf import files, stages, study  # pylint: disable=import-outside-toplevel
    runner = study.Study(FLAGS.config, FLAGS.workdir, log=lambda *_: None)
    per_stage = collections.defaultdict(list)
    started, finished, missing = [], [], []
    for cell in runner.graph:
        try:
            resolved = stages.resolve(runner.ctx, cell.address)
        except stages.NotReady:
            missing.append(cell.address)
            continue
        record = os.path.join(resolved.path or "", study.CELL_RECORD)
        if not resolved.finished or not os.path.exists(record):
            missing.append(cell.address)
            continue
        info = files.read_json(record)
        per_stage[_stage(cell)].append(info["seconds"])
        end = datetime.datetime.strptime(info["finished"], "%Y-%m-%dT%H:%M:%S%z")
        finished.append(end)
        started.append(end - datetime.timedelta(seconds=info["seconds"]))
    total = sum(sum(v) for v in per_stage.values())
    print(json.dumps({
        "benchmark": "study_stages", "workdir": os.path.abspath(FLAGS.workdir),
        "cells": len(runner.graph), "cells_without_record": len(missing),
        "unfinished_examples": missing[:5],
        "stages": {name: {"cells": len(v), "seconds": round(sum(v), 1),
                          "mean_seconds": round(sum(v) / len(v), 1)}
                   for name, v in sorted(per_stage.items())},
        "compute_seconds": round(total, 1),
        "span_seconds": round((max(finished) - min(started)).total_seconds(), 1)
        if finished else None,
        "first_start": min(started).isoformat() if started else None,
        "last_finish": max(finished).isoformat() if finished else None,
        "machine": platform.machine(), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    app.run(main)
