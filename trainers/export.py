r"""Exports a transferred ticket (or dense model) as a TF Serving SavedModel.

  python trainers/export.py --checkpoint=runs/transfer --export_dir=serving/ticket --version=1

--checkpoint is a finished transfer run's workdir (trainers/transfer.py or a study
cell); its best-RA weights are exported by default, after checking that the run's
weights, ticket and data on disk are still the ones it was trained with. Writes
<export_dir>/<version>/ (never overwritten) with assets/ticket.json; prints the
SavedModel's size and gzip size. A 2:4 ticket (ticket.json `pattern`) is checked kernel
by kernel. --onnx also writes <version>/model.onnx (pip install -e '.[onnx]'), checked
the same way, for TensorRT's sparse tensor cores:

  trtexec --onnx=serving/ticket/1/model.onnx --fp16 --sparsity=enable \
      --shapes=images:32x224x224x3
"""
from absl import app, flags

from dwlt_tf import checks, cli, data, export, runs

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Transfer run directory.")
flags.DEFINE_string("export_dir", None, "TF Serving model base directory.")
flags.DEFINE_integer("version", 1, "Version number (subdirectory).")
flags.DEFINE_enum("weights", "ra", ["sa", "ra"], "Export the best-SA or best-RA checkpoint.")
flags.DEFINE_bool("tflite", False, "Also write model.tflite (float32, sparse encoding).")
flags.DEFINE_bool("onnx", False, "Also write model.onnx for TensorRT (needs the onnx extra).")
flags.DEFINE_string("data_dir", None, "TFDS data directory (for the parity batch).")
flags.mark_flags_as_required(["checkpoint", "export_dir"])


def main(argv):
    del argv
    with cli.reported("export"):
        checks.positive_int("--version", FLAGS.version)
        export_dir = cli.output_dir("export_dir", FLAGS.export_dir, writable=True)
        export.check_version_free(export_dir, FLAGS.version)
        run = runs.open_run(FLAGS.checkpoint, FLAGS.data_dir)
        if FLAGS.onnx:
            export.check_onnx_available()
        path, info = export.export_run(run, export_dir, FLAGS.version, FLAGS.weights,
                                       FLAGS.tflite, splits=data.load(run.dataset),
                                       onnx=FLAGS.onnx)
    print(f"SavedModel: {path}\n  sparsity {100 * info['sparsity']:.2f}%, "
          f"{info['saved_model_bytes']:,} bytes, gzip {info['saved_model_gzip_bytes']:,} bytes"
          + (f"\n  pattern {info['pattern']} checked on {info['check_pattern']['kernels_checked']}"
             " conv kernels" if "check_pattern" in info else "")
          + (f"\n  ONNX: {path}/{export.ONNX_FILE} ({info['onnx_bytes']:,} bytes)"
             if FLAGS.onnx else ""))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
