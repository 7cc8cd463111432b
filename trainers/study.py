r"""Runs the whole double-win study (resumable; finished cells are reused).

  python trainers/study.py --config=configs/study.py:quickstart --workdir=runs/quickstart

Writes <workdir>/report.md (refreshed as cells finish, marked partial until done),
results.csv/.json, plots/*.png and export/<version>/.

Many processes, devices or hosts on one shared workdir -- each cell is computed under a
lease, so no cell is ever computed twice at once:

  python trainers/study.py --config=... --workdir=W                 # any number at once
  python trainers/study.py --config=... --workdir=W --shard=I/N     # share I of N
  python trainers/study.py --config=... --workdir=W --cell=<address> [--wait]
  python trainers/study.py --config=... --workdir=W --status        # progress, no work

  # a cluster: one job per cell through submitit (SLURM, or local processes)
  python trainers/study.py --config=... --workdir=W --launcher=submitit \
      --config.launcher.partition=gpu --config.launcher.gpus_per_cell=1

  # another scheduler: the cells with their dependencies and resources as JSON
  python trainers/study.py --config=... --workdir=W --plan=plan.json  # + plan.json.sh
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from dwlt_tf import cli, errors, launcher, report, study

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configs/study.py[:variant]")
cli.define_common_flags(overwrite=False)
flags.DEFINE_string("shard", None, "I/N: compute share I (0-based) of N of the cells; no "
                                   "report (a run without a selection assembles it).")
flags.DEFINE_string("cell", None, "Compute only this cell (an address from --plan/--status).")
flags.DEFINE_bool("wait", False, "With --shard/--cell: wait for inputs or leases other "
                                 "processes hold instead of stopping.")
flags.DEFINE_float("wait_timeout", 0.0, "Give up waiting after this many seconds (0: never).")
flags.DEFINE_string("plan", None, "Write the study's cells as commands to this JSON file "
                                  "(and a shell form to <file>.sh); compute nothing.")
flags.DEFINE_bool("status", False, "Print the study's progress (done / running / waiting / "
                                   "failed per cell kind); compute nothing.")
flags.DEFINE_enum("launcher", None, ["submitit"], "Run every cell as a job of this engine "
                                                 "(config section `launcher`).")
flags.mark_flags_as_required(["config", "workdir"])

_SELECTION_FLAGS = ("--shard", "--cell", "--plan", "--status", "--launcher", "--wait")


def _base_command():
    """This invocation without selection flags: what each planned cell's command extends."""
    args = [a for a in sys.argv[1:] if not a.startswith(_SELECTION_FLAGS)]
    return ["python", sys.argv[0]] + args


def _print_status(runner):
    counts, notable = runner.status()
    total = sum(sum(c.values()) for c in counts.values())
    done = sum(c["done"] for c in counts.values())
    print(f"{runner.workdir}: {done}/{total} cells done")
    for kind, states in counts.items():
        print(f"  {kind:9s} " + ", ".join(f"{n} {state}" for state, n in sorted(states.items())))
    for address, state, detail in notable:
        print(f"  {state}: {address} -- {detail}")


def main(argv):
    del argv
    with cli.reported("study"):
        chosen = [f for f in ("shard", "cell", "plan", "status", "launcher") if getattr(FLAGS, f)]
        if len(chosen) > 1:
            raise errors.ConfigError(f"--{' and --'.join(chosen)}: give at most one of them")
        if FLAGS.wait_timeout < 0:
            raise errors.ConfigError(f"--wait_timeout={FLAGS.wait_timeout}: must be >= 0")
        workdir = cli.output_dir("workdir", FLAGS.workdir)
        plan_file = cli.output_file("plan", FLAGS.plan) if FLAGS.plan else None
        config = cli.apply_data_dir(FLAGS.config, FLAGS.data_dir)
        spec = study.study_spec(config)  # validate everything before any work
        if plan_file:
            cells = study.write_plan(config, workdir, _base_command(), plan_file)
            print(f"study plan: {len(cells)} cells -> {plan_file} (and {plan_file}.sh)")
            return
        if FLAGS.status:  # (under the run's strategy: cells are keyed by its replicas)
            _print_status(study.Study(config, workdir, cli.setup(config), log=lambda *_: None,
                                      spec=spec))
            return
        if FLAGS.launcher:
            launcher.launch(config, spec, workdir, _base_command(), data_dir=FLAGS.data_dir)
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
        runner = study.Study(config, workdir, strategy, select=select, wait=FLAGS.wait,
                             wait_timeout=FLAGS.wait_timeout or None, spec=spec)
        _, summary = runner.run()
    if select is None:
        for line in report.headline(summary):
            print(line)
        print(f"study finished: {FLAGS.workdir}/report.md")
        return
    print(f"{select.description}: ran {len(runner.ran)} cells, {len(runner.finished)} "
          f"already finished, {len(runner.pending)} left (not this process's, or waiting "
          "for inputs or leases)")
    if FLAGS.shard and runner.pending and not FLAGS.wait:
        print("re-run this shard (or with --wait) when the other shards have finished their "
              "cells; then run without --shard to assemble the report")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
