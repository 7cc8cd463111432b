r"""Tunes transfer hyperparameters with keras-tuner over dwlt_tf's training loop.

  python trainers/tune.py --config=configs/tune.py:local --pretrained=weights/X \
      [--ticket=runs/imp/tickets/round_03] --workdir=runs/tune

Resumable: rerunning continues the search without repeating finished trials. Writes
<workdir>/trials.csv and <workdir>/best.flags (for trainers/transfer.py --flagfile).

Many workers (keras-tuner's distributed mode; one shared workdir, same command):

  KERASTUNER_TUNER_ID=chief KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 \
      python trainers/tune.py ...                     # serves the oracle, writes the outputs
  KERASTUNER_TUNER_ID=tuner1 KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 \
      python trainers/tune.py ...                     # one per worker: tuner1, tuner2, ...
"""
from absl import app, flags
from ml_collections import config_flags

from dwlt_tf import cli
from dwlt_tf import tune

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configs/tune.py[:variant]")
cli.define_common_flags()
cli.define_weights_flags("Ticket directory; omit to tune the dense model's transfer.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    with cli.reported("tune"):
        workdir = cli.output_dir("workdir", FLAGS.workdir)
        config, dataset, spec = cli.training_config(FLAGS.config, FLAGS.data_dir,
                                                    ("dataset", "train", "runtime", "tune"))
        tune.validate(config.tune, spec)
        tune.role()  # a half-configured distributed mode is bad input, named now
        strategy = cli.setup(config)
        rows, best, tuner = tune.search(FLAGS.pretrained, FLAGS.ticket, dataset, spec,
                                        config.tune, workdir, strategy,
                                        overwrite=FLAGS.overwrite)
    if best is None:  # a distributed-mode worker: the chief writes the outputs
        print(f"tuner {tuner.tuner_id}: ran trials {tuner.trials_run_this_call or 'none'}; "
              f"the chief writes {FLAGS.workdir}/trials.csv and best.flags")
        return
    print(tune.summary(rows))
    print(f"best: {best}\noverrides: {FLAGS.workdir}/best.flags")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
