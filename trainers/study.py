r"""Runs the whole double-win study (resumable; finished cells are reused).

  python trainers/study.py --config=configs/study.py:quickstart --workdir=runs/quickstart

Writes <workdir>/report.md, results.csv/.json, plots/*.png and export/<version>/.

Many devices or hosts, one shared workdir (each process sees its own device, e.g.
CUDA_VISIBLE_DEVICES=I; within a cell training still uses the config's tf.distribute
strategy):

  # N processes together; re-run a shard when it reports cells waiting for inputs
  python trainers/study.py --config=... --workdir=W --shard=I/N     # I = 0 .. N-1
  python trainers/study.py --config=... --workdir=W                 # assemble the report

  # or hand the cells to an existing scheduler (SLURM arrays, Kubernetes Jobs, ...)
  python trainers/study.py --config=... --workdir=W --plan=plan.json  # + plan.json.sh
  python trainers/study.py --config=... --workdir=W --cell=<address>  # one cell
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from dwlt_tf import cli, errors, study

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configs/study.py[:variant]")
cli.define_common_flags(overwrite=False)
flags.DEFINE_string("shard", None, "I/N: run share I (0-based) of N of the cells whose inputs "
                                   "are ready; no report (a final run without it assembles).")
flags.DEFINE_string("cell", None, "Run only this cell (an address from --plan's output).")
flags.DEFINE_string("plan", None, "Write the study's cells as commands to this JSON file "
                                  "(and a shell form to <file>.sh); run nothing.")
flags.mark_flags_as_required(["config", "workdir"])

_SELECTION_FLAGS = ("--shard", "--cell", "--plan")


def _base_command():
    """This invocation without selection flags: what each planned cell's command extends."""
    args = [a for a in sys.argv[1:] if not a.startswith(tuple(f"{f}=" for f in
                                                               _SELECTION_FLAGS))]
    return ["python", sys.argv[0]] + args


def main(argv):
    del argv
    with cli.reported("study"):
        chosen = [f for f in ("shard", "cell", "plan") if getattr(FLAGS, f)]
        if len(chosen) > 1:
            raise errors.ConfigError(f"--{' and --'.join(chosen)}: give at most one of them")
        config = cli.apply_data_dir(FLAGS.config, FLAGS.data_dir)
        study.plan(config)  # validate everything before any work
        if FLAGS.plan:
            cells = study.write_plan(config, FLAGS.workdir, _base_command(), FLAGS.plan)
            print(f"study plan: {len(cells)} cells -> {FLAGS.plan} (and {FLAGS.plan}.sh)")
            return
        select = None
        if FLAGS.shard:
            try:
                select = study.parse_shard(FLAGS.shard)
            except ValueError as e:
                raise errors.ConfigError(str(e)) from None
        elif FLAGS.cell:
            select = study.only(FLAGS.cell)
        strategy = cli.setup(config)
        runner = study.Study(config, FLAGS.workdir, strategy, select=select)
        runner.run()
    if select is None:
        print(f"study finished: {FLAGS.workdir}/report.md")
        return
    print(f"{select.description}: ran {len(runner.ran)} cells, {len(runner.finished)} "
          f"already finished, {len(runner.pending)} not this process's or waiting for inputs")
    if FLAGS.shard and runner.pending:
        print("re-run this shard when the other shards have finished their cells; then run "
              "without --shard to assemble the report")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
