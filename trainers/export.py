r"""Exports a transferred ticket (or dense model) as a TF Serving SavedModel.

  python trainers/export.py --checkpoint=runs/transfer --export_dir=serving/ticket --version=1

--checkpoint is a transfer run's workdir (trainers/transfer.py or a study cell); its
best-RA weights are exported by default. Writes <export_dir>/<version>/ (never
overwritten) with assets/ticket.json; prints the SavedModel's size and gzip size.
"""
from absl import app, flags

from dwlt_tf import cli, data, export, transfer

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Transfer run directory.")
flags.DEFINE_string("export_dir", None, "TF Serving model base directory.")
flags.DEFINE_integer("version", 1, "Version number (subdirectory).")
flags.DEFINE_enum("weights", "ra", ["sa", "ra"], "Export the best-SA or best-RA checkpoint.")
flags.DEFINE_bool("tflite", False, "Also write model.tflite (float32, sparse encoding).")
flags.DEFINE_string("data_dir", None, "TFDS data directory (for the parity batch).")
flags.mark_flags_as_required(["checkpoint", "export_dir"])


def main(argv):
    del argv
    with cli.reported("export"):
        splits = data.load(transfer.dataset_of(FLAGS.checkpoint, FLAGS.data_dir))
        path, info = export.export_transfer_cell(FLAGS.checkpoint, FLAGS.export_dir,
                                                 FLAGS.version, FLAGS.weights, FLAGS.tflite,
                                                 splits=splits)
    print(f"SavedModel: {path}\n  sparsity {100 * info['sparsity']:.2f}%, "
          f"{info['saved_model_bytes']:,} bytes, gzip {info['saved_model_gzip_bytes']:,} bytes")


if __name__ == "__main__":
    app.run(main)
