r"""Robustness audit of a transfer run or an exported ticket: is its RA real?

  python trainers/audit.py --run=runs/transfer --split=test
  python trainers/audit.py --export=serving/ticket/1 --square_queries=5000

Attacks the model (a run's best-RA checkpoint, or the exported SavedModel) on the same
examples at the same eps with its own PGD, APGD-CE and APGD-DLR (AutoAttack's white-box
pair) and the black-box Square attack (IBM's Adversarial Robustness Toolbox: pip install
'dwlt-tf[audit]'), prints each attack's RA, the per-example worst case and any
gradient-masking warning, and records them: `<run>/audit.json`, or the `audit` entry of
the export's assets/ticket.json. --eps defaults to the run's evaluation eps.
"""
import os

from absl import app, flags

from dwlt_tf import audit, cli, data, errors, export, files, runs

FLAGS = flags.FLAGS
flags.DEFINE_string("run", None, "A finished transfer run (trainers/transfer.py or a study cell).")
flags.DEFINE_string("export", None, "An export version directory (<export_dir>/<version>).")
flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Split to audit.")
flags.DEFINE_float("eps", None, "L-inf budget in [0, 1] (default: the run's evaluation eps).")
flags.DEFINE_integer("apgd_steps", 100, "Iterations of APGD-CE and APGD-DLR.")
flags.DEFINE_integer("square_queries", 1000, "Query budget of the Square attack.")
flags.DEFINE_integer("examples", 0, "Audit the first N examples of the split (0: all).")
flags.DEFINE_integer("seed", 0, "Seed of the attacks' randomness.")
flags.DEFINE_integer("batch_size", 250, "Batch size.")
flags.DEFINE_string("data_dir", None, "TFDS data directory, if not the run's.")


def main(argv):
    del argv
    with cli.reported("audit"):
        if (FLAGS.run is None) == (FLAGS.export is None):
            raise errors.ConfigError("give exactly one of --run=<transfer run> and "
                                     "--export=<export version directory>")
        spec = audit.AuditSpec(FLAGS.eps, FLAGS.apgd_steps, FLAGS.square_queries,
                               FLAGS.examples, FLAGS.seed, FLAGS.batch_size)
        model = None
        if FLAGS.export:
            info, loaded = export.open_export(FLAGS.export)
            source = (info.get("source_run") or {}).get("path")
            if not source:
                raise errors.ConfigError(f"--export={FLAGS.export!r}: its ticket.json names no "
                                         "source run (exported by an older dwlt_tf)")
            run = runs.open_run(source, FLAGS.data_dir)
            model = audit.saved_model_logits(loaded)
        else:
            run = runs.open_run(FLAGS.run, FLAGS.data_dir)
        result = audit.audit_run(run, data.load(run.dataset), FLAGS.split, spec, model)
    if FLAGS.export:
        export.add_audit(os.path.abspath(FLAGS.export), result.to_json())
        where = os.path.join(FLAGS.export, "assets", export.TICKET_ASSET)
    else:
        where = os.path.join(run.path, "audit.json")
        files.write_json(where, result.to_json())
    print(f"{result.examples} {FLAGS.split} examples, eps {result.eps * 255:.4g}/255: "
          f"SA {result.sa:.2f}%")
    for name, ra in result.ra.items():
        print(f"  RA under {name}: {ra:.2f}%")
    print(f"  worst case over all attacks: {result.worst_case_ra:.2f}%")
    for reason in result.reasons:
        print(f"  WARNING, possible gradient masking: {reason}")
    print(f"recorded in {where}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
