r"""SA and RA (PGD) of a finished transfer run's best checkpoints on any split.

  python trainers/evaluate.py --run=runs/transfer --split=test --steps=20
"""
from absl import app, flags

from dwlt_tf import attacks, cli, data, evaluate, transfer

FLAGS = flags.FLAGS
flags.DEFINE_string("run", None, "Workdir of a transfer run (trainers/transfer.py or a study cell).")
flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Split to evaluate.")
flags.DEFINE_enum("checkpoint", "both", ["sa", "ra", "both"], "best-SA, best-RA or both.")
flags.DEFINE_float("eps", 8 / 255, "L-inf budget in [0, 1] pixel units.")
flags.DEFINE_float("step_size", 2 / 255, "PGD step in [0, 1] pixel units.")
flags.DEFINE_integer("steps", 20, "PGD iterations (0: SA only).")
flags.DEFINE_integer("batch_size", 256, "Evaluation batch size.")
flags.DEFINE_string("data_dir", None, "TFDS data directory, if not the run's.")
flags.mark_flag_as_required("run")


def main(argv):
    del argv
    with cli.reported("evaluate"):
        splits = data.load(transfer.dataset_of(FLAGS.run, FLAGS.data_dir))
        attack = attacks.Attack(FLAGS.eps, FLAGS.step_size, FLAGS.steps) if FLAGS.steps else None
        for which in (("sa", "ra") if FLAGS.checkpoint == "both" else (FLAGS.checkpoint,)):
            model, _, _ = transfer.load_best(FLAGS.run, which, splits)
            acc = evaluate.evaluate(model, splits, FLAGS.split, FLAGS.batch_size, attack)
            print(f"best-{which.upper()} checkpoint on {FLAGS.split}: SA {acc.sa:.2f}%"
                  + (f", RA {acc.ra:.2f}% (PGD-{FLAGS.steps})" if attack else "")
                  + f" over {acc.count} images")


if __name__ == "__main__":
    app.run(main)
