r"""SavedModel, gzip and TFLite sizes of ResNet-50 tickets versus the dense model.

  python benchmarks/export_sizes.py [--sparsities=0.8,0.9,0.95] [--tflite]

A ticket's zeros compress: its gzipped SavedModel should shrink roughly with
(1 - sparsity) plus the mask-independent parts (BatchNorm, graph). Prints one JSON line.
"""
import json
import tempfile

from absl import app, flags

import dwlt_tf  # noqa: F401

FLAGS = flags.FLAGS
flags.DEFINE_list("sparsities", ["0.8", "0.9", "0.95"], "Ticket sparsities.")
flags.DEFINE_bool("tflite", True, "Also convert to TFLite (float32, sparse encoding).")
flags.DEFINE_integer("image_size", 224, "Serving image size.")


def main(argv):
    del argv
    from dwlt_tf import export, models, pruning, pruning_wrapper  # noqa
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for sparsity in [0.0] + [float(s) for s in FLAGS.sparsities]:
            model = pruning_wrapper.wrap(models.build_resnet("resnet50", 1000, "imagenet"))
            if sparsity:
                pruning_wrapper.set_masks(model, pruning.one_shot_magnitude_masks(
                    pruning_wrapper.get_kernels(model), sparsity))
            _, info = export.export(model, f"{tmp}/{sparsity}", 1, {}, FLAGS.image_size,
                                    "imagenet", tflite=FLAGS.tflite, log=lambda *_: None)
            results.append({k: info.get(k) for k in (
                "sparsity", "saved_model_bytes", "saved_model_gzip_bytes", "tflite_bytes",
                "tflite_gzip_bytes")})
    dense = results[0]
    for row in results:
        row["gzip_ratio_vs_dense"] = row["saved_model_gzip_bytes"] / dense["saved_model_gzip_bytes"]
        row["one_minus_sparsity"] = 1 - row["sparsity"]
        if row.get("tflite_bytes"):
            row["tflite_gzip_ratio_vs_dense"] = row["tflite_gzip_bytes"] / dense["tflite_gzip_bytes"]
    print(json.dumps({"arch": "resnet50", "image_size": FLAGS.image_size, "results": results}))


if __name__ == "__main__":
    app.run(main)
