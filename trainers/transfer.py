r"""Transfers one ticket (or the dense pre-trained model) to one downstream task.

  python trainers/transfer.py --config=configs/transfer.py:adv_cifar10 \
      --pretrained=weights/robust_resnet50 --ticket=runs/imp/tickets/round_10 \
      --workdir=runs/transfer --data_dir=~/tensorflow_datasets

Without --ticket the dense model is transferred; --config.seeds=1,2,3 runs it once per
seed (in <workdir>/seed_<s>) and prints the mean and standard deviation. Rerunning the same command resumes an
interrupted run; a finished run is reported, not retrained. A workdir holding a run with
other settings, weights, ticket or data is refused (--overwrite moves it aside).
"""
from absl import app, flags
from ml_collections import config_flags

from dwlt_tf import cli, transfer, verdicts

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configs/transfer.py[:variant]")
cli.define_common_flags()
cli.define_weights_flags("Ticket directory (masks.npz + ticket.json); omit for dense.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    with cli.reported("transfer"):
        workdir = cli.output_dir("workdir", FLAGS.workdir)
        config, dataset, spec = cli.training_config(FLAGS.config, FLAGS.data_dir,
                                                    ("dataset", "train", "runtime", "seeds"))
        seeds = cli.seeds(config)
        strategy = cli.setup(config)
        if seeds:
            results = transfer.run_seeds(FLAGS.pretrained, FLAGS.ticket, dataset, spec, seeds,
                                         workdir, strategy, overwrite=FLAGS.overwrite)
        else:
            results = [transfer.run(FLAGS.pretrained, FLAGS.ticket, dataset, spec,
                                    workdir, strategy, overwrite=FLAGS.overwrite)]
    for seed, result in zip(seeds or [spec.seed], results):
        for best in (result.best_sa, result.best_ra):
            print(f"seed {seed}, {best.checkpoint} checkpoint (epoch {best.epoch + 1}): test "
                  f"SA {_pct(best.test_sa)}, test RA {_pct(best.test_ra)}")
    if len(results) > 1 and results[0].best_sa.test_sa is not None:
        sa = verdicts.mean_std([r.best_sa.test_sa for r in results])
        ra = verdicts.mean_std([r.best_ra.test_ra or 0.0 for r in results])
        print(f"over seeds {list(seeds)}: test SA {sa[0]:.2f} +- {sa[1]:.2f}%, test RA "
              f"{ra[0]:.2f} +- {ra[1]:.2f}% (best-SA / best-RA checkpoints)")
    print(f"results: {FLAGS.workdir}/{'seed_<s>/' if seeds else ''}result.json")


def _pct(value):
    return "not measured" if value is None else f"{value:.2f}%"


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
