r"""SA and RA (PGD) of a finished transfer run's best checkpoints on any split.

  python trainers/evaluate.py --run=runs/transfer --split=test --steps=20
"""
from absl import app, flags

from dwlt_tf import checks, cli
from dwlt_tf import config as cfg
from dwlt_tf import data, evaluate, report, runs, train

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
        checks.positive_int("--batch_size", FLAGS.batch_size)
        checks.non_negative_int("--steps", FLAGS.steps)
        attack = cfg.attack_spec({"eps": FLAGS.eps, "step_size": FLAGS.step_size,
                                  "steps": FLAGS.steps}, "flags") if FLAGS.steps else None
        run = runs.open_run(FLAGS.run, FLAGS.data_dir)
        splits = data.load(run.dataset)
        for which in (("sa", "ra") if FLAGS.checkpoint == "both" else (FLAGS.checkpoint,)):
            model, _, _ = runs.load_best(run, which, splits)
            acc = evaluate.evaluate(model, splits, FLAGS.split, FLAGS.batch_size, attack)
            print(f"best-{which.upper()} checkpoint on {FLAGS.split}: SA {acc.sa:.2f}%"
                  + (f", RA {acc.ra:.2f}% ({report.attack_label(train.attack_description(attack))})"
                     if attack else "")
                  + f" over {acc.count} images")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
