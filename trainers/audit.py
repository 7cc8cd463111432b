r"""Robustness audit of a transfer run or an exported ticket: is its RA real?

  python trainers/audit.py --run=runs/transfer --split=test
  python trainers/audit.py --export=serving/ticket/1 --square_queries=5000

Attacks the model (a run's best-RA checkpoint, or the exported SavedModel) on the same
examples at the same eps with its own PGD and AutoAttack (--version=standard:
APGD-CE, APGD-T, FAB-T, Square with 5,000 queries; --version=fast: APGD-CE, APGD-DLR,
Square; dwlt_tf/audit.py and autoattack.py), prints the RA after each attack, AutoAttack's and the
per-example worst case, any gradient-masking warning, and records them:
`<run>/audit.json` (which examples each attack broke: `<run>/audit_records.json`), or the
`audit` entry of the export's assets/ticket.json. --eps
defaults to the run's evaluation eps.
"""
import os

from absl import app, flags

from dwlt_tf import audit, cli, data, errors, export, files, records, runs

FLAGS = flags.FLAGS
flags.DEFINE_string("run", None, "A finished transfer run (trainers/transfer.py or a study cell).")
flags.DEFINE_string("export", None, "An export version directory (<export_dir>/<version>).")
flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Split to audit.")
flags.DEFINE_enum("version", "standard", ["standard", "fast"],
                  "standard: AutoAttack's (APGD-CE, APGD-T, FAB-T, Square); fast: APGD-CE, "
                  "APGD-DLR, Square.")
flags.DEFINE_float("eps", None, "L-inf budget in [0, 1] (default: the run's evaluation eps).")
flags.DEFINE_integer("apgd_steps", 100, "Iterations of each APGD attack.")
flags.DEFINE_integer("fab_steps", 100, "Iterations of FAB-T (standard).")
flags.DEFINE_integer("target_classes", 9, "Target classes of APGD-T and FAB-T (standard).")
flags.DEFINE_integer("square_queries", 5000, "Query budget of the Square attack.")
flags.DEFINE_float("square_p_init", 0.8, "Square's initial fraction of the image changed.")
flags.DEFINE_integer("examples", 0, "Audit N examples of the split (0: all).")
flags.DEFINE_enum("subset", "first", ["first", "spread"],
                  "With --examples: the split's first N, or N evenly spaced over it (every "
                  "class of a class-sorted ImageFolder).")
flags.DEFINE_integer("seed", 0, "Seed of the attacks' randomness.")
flags.DEFINE_integer("batch_size", 250, "Batch size.")
flags.DEFINE_string("data_dir", None, "TFDS data directory, if not the run's.")


def main(argv):
    del argv
    with cli.reported("audit"):
        if (FLAGS.run is None) == (FLAGS.export is None):
            raise errors.ConfigError("give exactly one of --run=<transfer run> and "
                                     "--export=<export version directory>")
        spec = audit.AuditSpec(
            version=FLAGS.version, eps=FLAGS.eps, apgd_steps=FLAGS.apgd_steps,
            fab_steps=FLAGS.fab_steps, target_classes=FLAGS.target_classes,
            square_queries=FLAGS.square_queries, square_p_init=FLAGS.square_p_init,
            examples=FLAGS.examples, subset=FLAGS.subset, seed=FLAGS.seed,
            batch_size=FLAGS.batch_size)
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
        records.write(run.path, result.records, records.AUDIT_FILE)
        files.write_json(where, result.to_json())
    print(f"{result.examples} {FLAGS.split} examples, eps {result.eps * 255:.4g}/255, "
          f"AutoAttack {result.version}: SA {result.sa:.2f}%")
    for name, ra in result.ra.items():
        print(f"  RA {'under' if name == 'pgd' else 'after'} {name}: {ra:.2f}%")
    print(f"  AutoAttack ({result.version}) RA: {result.autoattack_ra:.2f}%; worst case with "
          f"PGD: {result.worst_case_ra:.2f}%")
    for reason in result.reasons:
        print(f"  WARNING, possible gradient masking: {reason}")
    print(f"recorded in {where}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
