r"""SA and RA (PGD) of a finished transfer run's best checkpoints on any split.

  python trainers/evaluate.py --run=runs/transfer --split=test --steps=20
"""
import os

from absl import app, flags

from dwlt_tf import attacks, cli, data, evaluate, files, tickets, transfer

FLAGS = flags.FLAGS
flags.DEFINE_string("run", None, "Workdir of a transfer run (trainers/transfer.py or a study cell).")
flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Split to evaluate.")
flags.DEFINE_enum("checkpoint", "both", ["sa", "ra", "both"], "best-SA, best-RA or both.")
flags.DEFINE_float("eps", 8 / 255, "L-inf budget in [0, 1] pixel units.")
flags.DEFINE_float("step_size", 2 / 255, "PGD step in [0, 1] pixel units.")
flags.DEFINE_integer("steps", 20, "PGD iterations (0: SA only).")
flags.DEFINE_integer("batch_size", 256, "Evaluation batch size.")
flags.mark_flag_as_required("run")


def main(argv):
    del argv
    with cli.reported("evaluate"):
        provenance = files.read_json(os.path.join(FLAGS.run, transfer.PROVENANCE_FILE))
        spec = files.read_json(os.path.join(FLAGS.run, "result.json"))["spec"]
        fields = dict(provenance["dataset_spec"])
        if fields.get("classes") is not None:
            fields["classes"] = tuple(fields["classes"])
        dataset = data.DataSpec(**fields)
        splits = data.load(dataset)
        attack = attacks.Attack(FLAGS.eps, FLAGS.step_size, FLAGS.steps) if FLAGS.steps else None
        masks = tickets.load(provenance["ticket"])[0] if provenance["ticket"] else None
        build, _ = transfer.model_fn(provenance["pretrained"], masks, splits, spec["seed"])
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        for which in (("sa", "ra") if FLAGS.checkpoint == "both" else (FLAGS.checkpoint,)):
            model = build()
            tf.train.Checkpoint(model=model).read(
                os.path.join(FLAGS.run, f"best_{which}", "ckpt")).expect_partial()
            acc = evaluate.evaluate(model, splits, FLAGS.split, FLAGS.batch_size, attack)
            print(f"best-{which.upper()} checkpoint on {FLAGS.split}: SA {acc.sa:.2f}%"
                  + (f", RA {acc.ra:.2f}% (PGD-{FLAGS.steps})" if attack else "")
                  + f" over {acc.count} images")


if __name__ == "__main__":
    app.run(main)
