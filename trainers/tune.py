r"""Tunes transfer hyperparameters with keras-tuner over dwlt_tf's training loop.

  python trainers/tune.py --config=configs/tune.py:local --pretrained=weights/X \
      [--ticket=runs/imp/tickets/round_03] --workdir=runs/tune

Resumable: rerunning continues the search without repeating finished trials. Writes
<workdir>/trials.csv and <workdir>/best.flags (for trainers/transfer.py --flagfile).
"""
from absl import app, flags
from ml_collections import config_flags

from dwlt_tf import cli
from dwlt_tf import config as cfg
from dwlt_tf import tune

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configs/tune.py[:variant]")
cli.define_common_flags()
flags.DEFINE_string("pretrained", None, "Converted pre-trained weights (convert_weights.py).")
flags.DEFINE_string("ticket", None, "Ticket directory; omit to tune the dense model's transfer.")
flags.mark_flags_as_required(["config", "workdir", "pretrained"])


def main(argv):
    del argv
    with cli.reported("tune"):
        config = cli.apply_data_dir(FLAGS.config, FLAGS.data_dir)
        cfg.check_keys(config, ("dataset", "train", "runtime", "tune"), "config")
        dataset = cfg.data_spec(config.dataset)
        spec = cfg.train_spec(config.train)
        tune.validate_space(config.tune.space, config.tune.objective, config.tune.weights,
                            spec, config.tune.oracle)
        strategy = cli.setup(config)
        rows, best, _ = tune.search(FLAGS.pretrained, FLAGS.ticket, dataset, spec, config.tune,
                                    FLAGS.workdir, strategy)
    print(tune.summary(rows))
    print(f"best: {best}\noverrides: {FLAGS.workdir}/best.flags")


if __name__ == "__main__":
    app.run(main)
