r"""Finds tickets with IMP (rewinding to the pre-trained weights) on the pre-training task.

  python trainers/imp.py --config=configs/imp.py:imagenet_adv \
      --pretrained=weights/robust_resnet50 --workdir=runs/imp_adv --data_dir=~/tensorflow_datasets

Tickets appear in <workdir>/tickets/round_KK as soon as they exist; rerunning resumes
(with a larger --config.imp.rounds it continues). A workdir holding an IMP run with other
settings, weights or data is refused (--overwrite moves it aside).
"""
import os

from absl import app, flags
from ml_collections import config_flags

from dwlt_tf import cli
from dwlt_tf import config as cfg
from dwlt_tf import convert, data, files, imp, tickets

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configs/imp.py[:variant]")
cli.define_common_flags()
cli.define_weights_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    with cli.reported("imp"):
        workdir = cli.output_dir("workdir", FLAGS.workdir)
        config, dataset, spec = cli.training_config(FLAGS.config, FLAGS.data_dir,
                                                    ("imp", "train", "dataset", "runtime"))
        imp_spec = cfg.imp_spec(config.imp)
        meta = convert.load_converted(FLAGS.pretrained).meta  # loads: damaged weights fail now
        strategy = cli.setup(config)
        paths = imp.run(lambda: convert.load_converted(FLAGS.pretrained).model,
                        data.load(dataset), spec, imp_spec, workdir, strategy,
                        meta={"source_sha256": meta["source_sha256"], "arch": meta["arch"],
                              "config": cfg.to_dict(config)},
                        pretrained=convert.weights_identity(meta), overwrite=FLAGS.overwrite)
    for path in paths:
        sparsity = files.read_json(os.path.join(path, tickets.META_FILE))["sparsity"]
        print(f"{path}: sparsity {100 * sparsity:.2f}%")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
