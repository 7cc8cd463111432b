r"""Latency and throughput of a dense ResNet-50 versus its 2:4 ticket (224 px).

  python benchmarks/sparse_inference.py --device=cpu            # the SavedModels on CPU
  python benchmarks/sparse_inference.py --device=cuda           # TensorRT, float16

Both models are exported the way tickets are served (`export.export`: the dense model
and the same weights pruned 2:4 along the input channels, `omp_2by4`, every conv whose
input channels are a multiple of 4; the pattern is checked in the export).

* `cpu`: times the SavedModels' `serving_default` (float32: TensorFlow's CPU kernels
  have no float16 convolutions worth timing). Dense CPU convolutions skip no zeros, so
  the 2:4 ticket is expected to run at the dense model's speed.
* `cuda`: exports both to ONNX (the `onnx` extra), builds a TensorRT engine of each
  with float16 and -- for the ticket -- sparse weights enabled
  (`BuilderFlag.SPARSE_WEIGHTS`, what `trtexec --sparsity=enable` sets), and times
  them on the GPU. Sparse tensor cores need an Ampere or later GPU; TensorRT reports
  which layers it ran sparse in its verbose build log. Needs `tensorrt` and a CUDA
  build of torch (for device buffers); without a GPU or TensorRT it stops with one line.

Prints one JSON object: per model and batch size, median latency (ms) and throughput
(images/s) over `--repeats` timed calls after `--warmup` untimed ones; the two models'
calls alternate (dense, 2:4, dense, ...) so that drift on the machine falls on both.
"""
import json
import os
import platform
import statistics
import sys
import tempfile
import time

from absl import app, flags

# dwlt_tf (and with it TensorFlow) is imported only after the device check, so that a
# missing GPU or TensorRT is one line on stderr, not one under TensorFlow's start-up log.

FLAGS = flags.FLAGS
flags.DEFINE_enum("device", "cpu", ["cpu", "cuda"], "Where to run the models.")
flags.DEFINE_list("batch_sizes", ["1", "32", "256"], "Batch sizes.")
flags.DEFINE_integer("image_size", 224, "Input size (pixels).")
flags.DEFINE_integer("warmup", 2, "Untimed calls per batch size.")
flags.DEFINE_integer("repeats", 5, "Timed calls per batch size.")
flags.DEFINE_string("pretrained", None, "Converted weights to use (default: random init; "
                    "speed does not depend on the values).")


class Unavailable(Exception):
    """The requested device cannot run here (one line, no traceback)."""


def _models():
    """(dense, 2:4) wrapped ResNet-50s sharing the same weights outside the masks."""
    from dwlt_tf import convert, models, pruning, pruning_wrapper  # noqa
    import tf_keras  # noqa
    out = {}
    for name in ("dense", "2:4"):
        if FLAGS.pretrained:
            base = convert.load_converted(FLAGS.pretrained).model
        else:
            tf_keras.utils.set_random_seed(0)
            base = models.build_resnet("resnet50", 1000, "imagenet")
        model = pruning_wrapper.wrap(base)
        if name == "2:4":
            pruning_wrapper.set_masks(model, pruning.one_shot_nm_masks(
                pruning_wrapper.get_kernels(model), (2, 4)))
        out[name] = model
    return out


def _time_interleaved(calls, batch):
    """{name: timing} of `calls` ({name: f(batch)}), timed in alternation (A B A B ...)
    so that drift -- frequency, caches, a neighbour's load -- falls on all alike."""
    for _ in range(FLAGS.warmup):
        for call in calls.values():
            call(batch)
    times = {name: [] for name in calls}
    for _ in range(FLAGS.repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call(batch)
            times[name].append(time.perf_counter() - start)
    out = {}
    for name, measured in times.items():
        median = statistics.median(measured)
        out[name] = {"latency_ms": 1e3 * median, "images_per_s": len(batch) / median,
                     "latency_ms_all": [round(1e3 * t, 3) for t in measured]}
    return out


def _check_cuda():
    try:
        import tensorrt  # noqa: F401  pylint: disable=import-outside-toplevel
    except ImportError:
        raise Unavailable("--device=cuda needs TensorRT's Python package (pip install "
                          "tensorrt) and a GPU; neither is used on CPU") from None
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise Unavailable("--device=cuda needs a CUDA build of torch for device "
                          "buffers") from None
    if not torch.cuda.is_available():
        raise Unavailable("--device=cuda: no CUDA GPU visible to torch "
                          f"(torch {torch.__version__})")
    from dwlt_tf import export  # pylint: disable=import-outside-toplevel
    try:
        export.check_onnx_available()
    except Exception as e:  # a UserError: one line
        raise Unavailable(f"--device=cuda: {e}") from None


def _cpu(models, tmp, sizes):
    import numpy as np  # noqa
    import tensorflow as tf  # noqa
    from dwlt_tf import export  # noqa
    results, calls = {}, {}
    for name, model in models.items():
        meta = {"pattern": name if name == "2:4" else "unstructured"}
        path, info = export.export(model, os.path.join(tmp, name.replace(":", "by")), 1, meta,
                                   FLAGS.image_size, "imagenet", log=lambda *_: None)
        serve = tf.saved_model.load(path).signatures["serving_default"]
        calls[name] = lambda x, serve=serve: serve(images=x)["logits"].numpy()
        results[name] = {"sparsity": info["sparsity"],
                         "pattern_check": info.get("check_pattern")}
    rng = np.random.default_rng(0)
    for size in sizes:
        images = tf.constant(rng.random((size, FLAGS.image_size, FLAGS.image_size, 3),
                                        np.float32))
        for name, timing in _time_interleaved(calls, images).items():
            results[name][f"batch_{size}"] = timing
    return results


def _cuda(models, tmp, sizes):
    import numpy as np  # noqa
    import tensorrt as trt  # noqa
    import torch  # noqa
    from dwlt_tf import export  # noqa
    from dwlt_tf.export import _Serving  # noqa  pylint: disable=protected-access
    from dwlt_tf import pruning_wrapper  # noqa
    logger = trt.Logger(trt.Logger.WARNING)
    results, contexts, engines, buffers = {}, {}, {}, []
    sample = np.random.default_rng(0).random((2, FLAGS.image_size, FLAGS.image_size, 3),
                                             np.float32)
    for name, model in models.items():
        plain = pruning_wrapper.strip(model)
        serving = _Serving(plain, FLAGS.image_size, "imagenet", 1000)
        reference = serving.serve(sample)["logits"].numpy()
        onnx_path = os.path.join(tmp, f"{name.replace(':', 'by')}.onnx")
        info = export.to_onnx(serving, onnx_path, sample, reference,
                              "2:4" if name == "2:4" else "unstructured")
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        with open(onnx_path, "rb") as f:
            if not parser.parse(f.read()):
                raise RuntimeError(f"TensorRT cannot parse {onnx_path}: "
                                   f"{parser.get_error(0)}")
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.FP16)
        if name == "2:4":
            config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
        profile = builder.create_optimization_profile()
        shape = (FLAGS.image_size, FLAGS.image_size, 3)
        profile.set_shape("images", (min(sizes),) + shape, (max(sizes),) + shape,
                          (max(sizes),) + shape)
        config.add_optimization_profile(profile)
        engine = trt.Runtime(logger).deserialize_cuda_engine(
            builder.build_serialized_network(network, config))
        engines[name] = engine  # alive as long as its context
        contexts[name] = engine.create_execution_context()
        results[name] = {"onnx_bytes": info["onnx_bytes"],
                         "onnx_pattern_check": info.get("check_onnx_pattern"),
                         "gpu": torch.cuda.get_device_name(), "tensorrt": trt.__version__}
    stream = torch.cuda.Stream()
    for size in sizes:
        images = torch.rand((size, FLAGS.image_size, FLAGS.image_size, 3), device="cuda")
        calls = {}
        for name, context in contexts.items():
            buffers.append(torch.empty((size, 1000), device="cuda"))
            context.set_input_shape("images", tuple(images.shape))
            context.set_tensor_address("images", images.data_ptr())
            context.set_tensor_address("logits", buffers[-1].data_ptr())

            def run(_, context=context):
                context.execute_async_v3(stream.cuda_stream)
                stream.synchronize()
            calls[name] = run
        for name, timing in _time_interleaved(calls, images).items():
            results[name][f"batch_{size}"] = timing
    return results


def main(argv):
    del argv
    sizes = [int(s) for s in FLAGS.batch_sizes]
    try:
        if FLAGS.device == "cuda":
            _check_cuda()
    except Unavailable as e:
        print(f"sparse_inference: {e}", file=sys.stderr)
        sys.exit(2)
    import dwlt_tf  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    start = time.time()
    models = _models()
    with tempfile.TemporaryDirectory() as tmp:
        results = (_cuda if FLAGS.device == "cuda" else _cpu)(models, tmp, sizes)
    for size in sizes:
        key = f"batch_{size}"
        results.setdefault("speedup_2by4_vs_dense", {})[key] = (
            results["2:4"][key]["images_per_s"] / results["dense"][key]["images_per_s"])
    print(json.dumps({
        "benchmark": "sparse_inference", "arch": "resnet50", "image_size": FLAGS.image_size,
        "device": FLAGS.device, "dtype": "float16" if FLAGS.device == "cuda" else "float32",
        "batch_sizes": sizes, "warmup": FLAGS.warmup, "repeats": FLAGS.repeats,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "wall_s": round(time.time() - start, 1), "results": results}))


if __name__ == "__main__":
    app.run(main)
