r"""Runs the whole double-win study (resumable; finished cells are reused).

  python trainers/study.py --config=configs/study.py:quickstart --workdir=runs/quickstart

Writes <workdir>/report.md, results.csv/.json, plots/*.png and export/<version>/.
"""
from absl import app, flags
from ml_collections import config_flags

from dwlt_tf import cli, study

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configs/study.py[:variant]")
cli.define_common_flags(overwrite=False)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    with cli.reported("study"):
        config = cli.apply_data_dir(FLAGS.config, FLAGS.data_dir)
        study.plan(config)  # validate everything before any work
        strategy = cli.setup(config)
        study.run(config, FLAGS.workdir, strategy)
    print(f"study finished: {FLAGS.workdir}/report.md")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
