r"""Converts a PyTorch ResNet checkpoint into dwlt_tf Keras weights.

Writes a new directory holding `weights.h5` (Keras weights), `converted.json` (detected
format, arch, num_classes, normalization, sha256 of the source, sparsity if masked)
and, for masked (ticket) checkpoints, a `ticket/` with the masks. The other trainers
take that directory as their initial weights.

  python trainers/convert_weights.py --checkpoint=imagenet_linf_4.pt \
      --arch=resnet50 --stem=imagenet --output=weights/robust_resnet50
"""
from absl import app, flags

from dwlt_tf import cli, convert, errors, models

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "PyTorch checkpoint (.pth/.pt/.ckpt) to convert.")
flags.DEFINE_enum("arch", "resnet50", sorted(models.ARCHS), "Architecture of the checkpoint.")
flags.DEFINE_enum("stem", "imagenet", list(models.STEMS), "Stem of the checkpoint.")
flags.DEFINE_string("output", None, "New directory to write (must not exist).")
flags.DEFINE_list("mean", None, "Override the normalization mean (3 floats).")
flags.DEFINE_list("std", None, "Override the normalization std (3 floats).")
flags.mark_flags_as_required(["checkpoint", "output"])


def main(argv):
    del argv
    with cli.reported("convert_weights"):
        mean, std = cli.float_triple("mean", FLAGS.mean), cli.float_triple("std", FLAGS.std)
        if std is not None and min(std) <= 0:
            raise errors.ConfigError(f"--std={','.join(FLAGS.std)}: must be positive")
        output = cli.new_output("output", FLAGS.output)
        converted = convert.convert(FLAGS.checkpoint, FLAGS.arch, FLAGS.stem, mean, std)
        out = convert.save_converted(output, converted)
    meta = converted.meta
    print(f"{meta['format']} checkpoint -> {out}\n  {meta['arch']} ({meta['stem']} stem), "
          f"{meta['num_classes']} classes, normalization from {meta['normalization']}"
          + (f", sparsity {100 * meta['sparsity']:.2f}%" if meta["masked"] else ""))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
