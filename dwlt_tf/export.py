"""SavedModel (and TFLite) export of tickets, ready for TF Serving.

The exported model needs neither dwlt_tf nor the pruning wrappers: they are stripped
(`tfmot.sparsity.keras.strip_pruning`) and the kernels hold the exact zeros. Layout is
TF Serving's: `<export_dir>/<version>/saved_model.pb`, `variables/`, `assets/ticket.json`.
A version is written under a temporary name and renamed into place, so a crash never
leaves a half-written version; an existing version is never overwritten.

Signatures:
* `serving_default`: `images` float32 [N, S, S, 3] in [0, 1] (S = the training image
  size) -> `logits` [N, C], `probabilities` [N, C], `classes` int64 [N].
* `serve_encoded`: `image_bytes` string [N] (JPEG or PNG) -> the same outputs, with the
  evaluation preprocessing of training done inside the graph.
Inputs of another rank, channel count or dtype are rejected by the signature; pixel
values outside [0, 1] (e.g. 0-255 images) fail with a clear error.

Before the rename, the export is reloaded: the sparsity recomputed from the SavedModel's
own variables must equal the recorded one, and its outputs must equal the Keras model's
on a batch. A ticket with an N:M pattern (ticket.json `pattern`, e.g. "2:4") is also
checked kernel by kernel: every conv kernel of the SavedModel with groups of M input
channels must hold at most N non-zeros per group (`check_pattern` in ticket.json lists
the kernels left dense) -- what TensorRT's sparse tensor cores need.
"""
import gzip
import io
import os
import shutil
import tarfile

import numpy as np

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf

from dwlt_tf import (checks, errors, files, pipeline, preprocess, pruning, pruning_wrapper,
                     runs, tickets)

TICKET_ASSET = "ticket.json"


class ExportError(RuntimeError):
    """The export failed a check; nothing was written under the version's name."""


class ExportNotFoundError(errors.UserError, FileNotFoundError):
    """A path that is not a complete export version (`<export_dir>/<version>`)."""


def _preprocess_encoded(image_bytes, size, augment):
    def one(encoded):
        return preprocess.for_eval(preprocess.decode(encoded, "request image"), size, augment)
    return tf.map_fn(one, image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3],
                                                                          tf.float32))


class _Serving(tf.Module):
    def __init__(self, model, size, augment, num_classes):
        super().__init__()
        self.model = model
        # Tracked so a reloaded SavedModel exposes the ticket's kernels for audits
        # (`tf.saved_model.load(path).conv_kernels`), no Keras needed.
        self.conv_kernels = [v for v in model.weights if _is_conv_kernel(v)]
        self.size = size
        self.augment = augment
        # Unknown rank on purpose: a restored signature does not enforce its input spec,
        # and a spec with static dimensions would let TensorFlow fold away the checks
        # below, turning a wrong input into a cryptic kernel error. The expected shape is
        # checked at run time and stated in the error, the README and ticket.json.
        images = tf.TensorSpec(None, tf.float32, name="images")
        encoded = tf.TensorSpec([None], tf.string, name="image_bytes")
        self.serve = tf.function(self._serve, input_signature=[images])
        self.serve_encoded = tf.function(self._serve_encoded, input_signature=[encoded])

    def _outputs(self, images):
        logits = tf.cast(self.model(images, training=False), tf.float32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits),
                "classes": tf.argmax(logits, axis=-1)}

    def _serve(self, images):
        # A restored signature does not enforce its input spec, so check explicitly.
        expected = f"images must be float32 [N, {self.size}, {self.size}, 3]"
        # Valid for any rank (no branch, nothing that fails on a wrong shape itself).
        shape = tf.shape(images)
        first4 = tf.concat([shape, tf.zeros([4], tf.int32)], 0)[:4]
        well_shaped = tf.logical_and(
            tf.equal(tf.size(shape), 4),
            tf.reduce_all(tf.equal(first4[1:], [self.size, self.size, 3])))
        shape_check = tf.debugging.Assert(well_shaped, [f"{expected}; got shape", shape])
        with tf.control_dependencies([shape_check]):
            checks = [tf.debugging.assert_greater_equal(
                          images, 0.0, message="images must be float32 pixels in [0, 1]"),
                      tf.debugging.assert_less_equal(
                          images, 1.0, message="images must be float32 pixels in [0, 1] "
                                               "(got values > 1: 0-255 images? divide by 255)")]
        with tf.control_dependencies(checks):
            images = tf.ensure_shape(tf.identity(images), [None, self.size, self.size, 3])
        return self._outputs(images)

    def _serve_encoded(self, image_bytes):
        return self._outputs(_preprocess_encoded(image_bytes, self.size, self.augment))


def _is_conv_kernel(variable):
    return len(variable.shape) == 4 and "kernel" in variable.name


def conv_kernel_sparsity(variables):
    """Sparsity over every rank-4 kernel among `variables` (what a ticket prunes)."""
    return tickets.sparsity({i: v.numpy() != 0 for i, v in enumerate(variables)
                             if _is_conv_kernel(v)})


def check_pattern(variables, pattern):
    """`pattern_report` of the rank-4 kernels among `variables` (a SavedModel's)."""
    return pattern_report({v.name: v.numpy() for v in variables if _is_conv_kernel(v)},
                          pattern)


def pattern_report(kernels, pattern, where="the ticket"):
    """{"pattern", "axis", "kernels_checked", "kernels_dense", "kernels_dense_why"} for
    {name: kernel in Keras layout}; raises ExportError naming the kernels that break an
    N:M `pattern`."""
    n, m = pruning.parse_pattern(pattern)
    broken = pruning.nm_violations(kernels, n, m)
    if broken:
        named = ", ".join(f"{k} ({c} groups)" for k, c in sorted(broken.items())[:5])
        raise ExportError(f"{where} is recorded as {pattern}, but kernels hold more than "
                          f"{n} non-zeros in some groups of {m} input channels: {named}")
    dense = pruning.nm_dense_layers(kernels, m)
    return {"pattern": pattern, "axis": pruning.NM_AXIS,
            "kernels_checked": len(kernels) - len(dense), "kernels_dense": dense,
            "kernels_dense_why": f"input channels not a multiple of {m}"}


def _dir_size(path):
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, names in os.walk(path) for f in names)


def _gzip_size(path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(path, arcname=".")
    return len(gzip.compress(buffer.getvalue(), compresslevel=9))


def export(model, export_dir, version, meta, image_size, augment="cifar", sample=None,
           tflite=False, log=print, onnx=False):
    """Exports `model` (wrapped or plain) as `<export_dir>/<version>`; returns the path.

    Args:
      meta: written to assets/ticket.json (architecture, class names, sparsity, ...).
      sample: float32 images [N, S, S, 3] in [0, 1] for the parity check (random if None).
      tflite: also write `<version>/model.tflite` (float32, sparse-weight encoding) and
        check its outputs against the SavedModel's.
      onnx: also write `<version>/model.onnx` (`to_onnx`; needs the `onnx` extra).
    Returns the dict of measured sizes and checks (also stored in ticket.json).
    """
    target = check_version_free(export_dir, version)
    plain = pruning_wrapper.strip(model) if pruning_wrapper.wrappers(model) else model
    expected = conv_kernel_sparsity(plain.weights)
    num_classes = int(plain.output_shape[-1])
    serving = _Serving(plain, image_size, augment, num_classes)
    if sample is None:
        sample = np.random.default_rng(0).random((4, image_size, image_size, 3), np.float32)
    reference = serving.serve(tf.constant(sample))["logits"].numpy()

    tmp = files.make_temp_dir(os.path.dirname(target), f".tmp-{version}-")
    try:
        info = dict(meta)
        info.update(sparsity=expected, image_size=image_size, preprocessing=augment,
                    num_classes=num_classes, dwlt_tf_version=dwlt_tf.__version__,
                    signatures={"serving_default": "images float32 [N,S,S,3] in [0,1] -> "
                                "logits, probabilities, classes",
                                "serve_encoded": "image_bytes string [N] (JPEG/PNG) -> "
                                "logits, probabilities, classes"})
        os.makedirs(os.path.join(tmp, "asset"))
        asset_src = os.path.join(tmp, "asset", TICKET_ASSET)
        files.write_json(asset_src, info)
        serving.ticket_info = tf.saved_model.Asset(asset_src)
        saved = os.path.join(tmp, "model")
        tf.saved_model.save(serving, saved, signatures={
            "serving_default": serving.serve, "serve_encoded": serving.serve_encoded})
        reloaded = tf.saved_model.load(saved)
        measured = conv_kernel_sparsity(reloaded.conv_kernels)
        if abs(measured - expected) > 1e-12:
            raise ExportError(f"sparsity of the SavedModel's variables {measured:.6f} != "
                              f"recorded {expected:.6f}")
        if pruning.parse_pattern(info.get("pattern", pruning.UNSTRUCTURED)) is not None:
            info["check_pattern"] = check_pattern(reloaded.conv_kernels, info["pattern"])
        got = reloaded.signatures["serving_default"](images=tf.constant(sample))["logits"]
        delta = float(np.max(np.abs(got.numpy() - reference)))
        if delta > 1e-5 * max(1.0, float(np.max(np.abs(reference)))):
            raise ExportError(f"reloaded SavedModel's logits differ by {delta}")
        info.update(check_sparsity=measured, check_max_abs_logit_delta=delta,
                    saved_model_bytes=_dir_size(saved), saved_model_gzip_bytes=_gzip_size(saved))
        if tflite:
            info.update(_tflite(serving, saved, sample, reference))
        if onnx:
            info.update(to_onnx(serving, os.path.join(saved, ONNX_FILE), sample, reference,
                                info.get("pattern", pruning.UNSTRUCTURED)))
        # The tracked asset, now with the checks' results.
        files.write_json(os.path.join(saved, "assets", TICKET_ASSET), info)
        os.rename(saved, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"exported {target}: sparsity {100 * expected:.2f}%, SavedModel "
        f"{info['saved_model_bytes'] / 1e6:.2f} MB ({info['saved_model_gzip_bytes'] / 1e6:.2f} "
        f"MB gzipped)" + (f", TFLite {info['tflite_bytes'] / 1e6:.2f} MB" if tflite else "")
        + (f", ONNX {info['onnx_bytes'] / 1e6:.2f} MB" if onnx else ""))
    return target, info


ONNX_FILE = "model.onnx"
ONNX_OPSET = 17


def check_onnx_available():
    """Fails with one line (before any work) when the onnx extra is not installed."""
    _import_onnx()


def _import_onnx():
    try:
        import onnx  # pylint: disable=import-outside-toplevel
        import tf2onnx  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise errors.UserError(f"ONNX export needs tf2onnx and onnx ({e}); install the "
                               "extra: pip install -e '.[onnx]'") from None
    return onnx, tf2onnx


def onnx_conv_kernels(path):
    """{Conv node name: kernel in Keras layout (kh, kw, cin, cout)} of an ONNX model (ONNX
    stores (cout, cin, kh, kw))."""
    onnx, _ = _import_onnx()
    graph = onnx.load(path).graph
    initializers = {i.name: i for i in graph.initializer}
    return {node.name: np.transpose(onnx.numpy_helper.to_array(initializers[node.input[1]]),
                                    (2, 3, 1, 0))
            for node in graph.node if node.op_type == "Conv" and node.input[1] in initializers}


def to_onnx(serving, path, sample, reference, pattern=pruning.UNSTRUCTURED):
    """Writes the model (images float32 [N, S, S, 3] in [0, 1] -> logits) as ONNX for
    TensorRT (`trtexec --onnx=model.onnx --fp16 --sparsity=enable`) and checks it: an N:M
    ticket's conv kernels keep the pattern in the ONNX file too, and -- with onnxruntime
    installed -- its logits equal the SavedModel's."""
    onnx, tf2onnx = _import_onnx()
    spec = tf.TensorSpec([None, serving.size, serving.size, 3], tf.float32, name="images")
    function = tf.function(
        lambda images: {"logits": serving._outputs(images)["logits"]},  # pylint: disable=protected-access
        input_signature=[spec])
    tf2onnx.convert.from_function(function, input_signature=[spec], opset=ONNX_OPSET,
                                  output_path=path)
    onnx.checker.check_model(path)
    out = {"onnx_bytes": os.path.getsize(path), "onnx_opset": ONNX_OPSET,
           "onnx_input": "images float32 [N,S,S,3] in [0,1] (NHWC) -> logits"}
    if pruning.parse_pattern(pattern) is not None:
        out["check_onnx_pattern"] = pattern_report(onnx_conv_kernels(path), pattern,
                                                   "the ONNX model")
    try:
        import onnxruntime  # pylint: disable=import-outside-toplevel
    except ImportError:
        out["check_onnx_max_abs_logit_delta"] = None  # not checked: no onnxruntime
        return out
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": np.asarray(sample, np.float32)})[0]
    delta = float(np.max(np.abs(got - reference)))
    if delta > 1e-4 * max(1.0, float(np.max(np.abs(reference)))):
        raise ExportError(f"ONNX logits differ from the SavedModel's by {delta}")
    out["check_onnx_max_abs_logit_delta"] = delta
    return out


def _tflite(serving, saved_dir, sample, reference):
    # TFLite takes the model function itself (static input shape, no graph asserts:
    # its runtime checks input shapes on its own).
    spec = tf.TensorSpec([None, serving.size, serving.size, 3], tf.float32, name="images")
    function = tf.function(serving._outputs,  # pylint: disable=protected-access
                           input_signature=[spec]).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], serving)
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    blob = converter.convert()
    with open(os.path.join(saved_dir, "model.tflite"), "wb") as f:
        f.write(blob)
    interpreter = tf.lite.Interpreter(model_content=blob)
    runner = interpreter.get_signature_runner()  # resizes its input to the batch
    got = runner(images=sample)["logits"]
    delta = float(np.max(np.abs(got - reference)))
    if delta > 1e-4 * max(1.0, float(np.max(np.abs(reference)))):
        raise ExportError(f"TFLite logits differ from the SavedModel's by {delta}")
    return {"tflite_bytes": len(blob), "tflite_gzip_bytes": len(gzip.compress(blob, 9)),
            "check_tflite_max_abs_logit_delta": delta}


def check_version_free(export_dir, version):
    """`<export_dir>/<version>`, after checking the version is a positive int not taken."""
    checks.positive_int("version", version)
    target = os.path.join(os.path.abspath(export_dir), str(version))
    if os.path.lexists(target):
        raise errors.OutputExistsError(
            f"Export version {target!r} already exists; versions are never overwritten "
            f"(choose --version; the next free one is {next_version(export_dir)})")
    return target


def next_version(export_dir):
    """The smallest version number above every existing one (1 for a new directory)."""
    export_dir = os.path.abspath(export_dir)
    versions = [int(n) for n in os.listdir(export_dir) if n.isdigit()] \
        if os.path.isdir(export_dir) else []
    return max(versions, default=0) + 1


def find_version(export_dir, run_key, checkpoint):
    """The export version holding checkpoint `checkpoint` of the run keyed `run_key`
    (its ticket.json's `source_run`), or None."""
    export_dir = os.path.abspath(export_dir)
    if not os.path.isdir(export_dir):
        return None
    for name in sorted((n for n in os.listdir(export_dir) if n.isdigit()), key=int):
        source = (exported_info(export_dir, name) or {}).get("source_run", {})
        if source.get("key") == run_key and source.get("checkpoint") == checkpoint:
            return int(name)
    return None


def open_export(path):
    """(ticket.json as a dict, the loaded SavedModel) of the export version at `path`.

    Raises ExportNotFoundError, naming the path and what is wrong, for anything that is
    not a complete export (missing, a file, no ticket.json, a damaged saved_model.pb or
    variables/).
    """
    path = os.path.abspath(path)
    asset = os.path.join(path, "assets", TICKET_ASSET)
    if not os.path.isfile(asset):
        what = ("no such directory" if not os.path.exists(path) else "a file" if
                os.path.isfile(path) else f"no assets/{TICKET_ASSET}")
        raise ExportNotFoundError(f"{path!r} is not an export version directory ({what}; "
                                  "exports are <export_dir>/<version>/ written by "
                                  "trainers/export.py or a study)")
    try:
        info = files.read_json(asset)
        loaded = tf.saved_model.load(path)
        loaded.signatures["serving_default"]  # pylint: disable=pointless-statement
    except (OSError, ValueError, KeyError, tf.errors.OpError) as e:
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        raise ExportNotFoundError(f"export {path!r} is damaged ({first[:160]}); export it "
                                  "again") from None
    return info, loaded


def exported_info(export_dir, version):
    """The ticket.json of `<export_dir>/<version>`, or None when there is no such export."""
    path = os.path.join(os.path.abspath(export_dir), str(version), "assets", TICKET_ASSET)
    return files.read_json(path) if os.path.isfile(path) else None


def add_audit(target, result: dict):
    """Records a robustness audit (`audit.AuditResult.to_json()`) of an exported model in
    its assets/ticket.json (atomically); the SavedModel itself is untouched."""
    path = os.path.join(target, "assets", TICKET_ASSET)
    info = files.read_json(path)
    info["audit"] = result
    files.update_json(path, info)  # unchanged (a re-run): nothing written


def _ticket_pattern(ticket_dir):
    """The ticket's recorded pattern ("unstructured" for the dense model and for tickets
    written before patterns were recorded)."""
    if not ticket_dir:
        return pruning.UNSTRUCTURED
    meta = files.read_json(os.path.join(ticket_dir, tickets.META_FILE))
    return meta.get("pattern", pruning.UNSTRUCTURED)


def export_run(run: runs.FinishedRun, export_dir, version, which="ra", tflite=False,
               extra=None, splits=None, log=print, onnx=False):
    """Exports a finished transfer run's best-SA ("sa") or best-RA ("ra") checkpoint.

    ticket.json's `test_sa`/`test_ra` are the exported checkpoint's own test numbers
    (RA measured with `ra_attack`); the other checkpoint's are kept, labelled, under
    `other_checkpoints`. `source_run` names the run, its identity key and the checkpoint.
    """
    if splits is None:
        raise ValueError("export_run needs the downstream splits (for the head size, "
                         "normalization and a parity batch)")
    model, provenance, masks = runs.load_best(run, which, splits)
    sample = next(iter(pipeline.eval_batches(splits, "test", 8)))["image"].numpy()
    chosen = run.result.best(which)
    other = run.result.best("sa" if which == "ra" else "ra")
    info = {"architecture": provenance["arch"], "stem": provenance["stem"],
            "base_width": provenance["base_width"], "class_names": provenance["class_names"],
            "pretraining": provenance["pretraining"],
            "source_weights_sha256": provenance["pretrained_sha256"],
            "ticket_round": provenance["ticket_round"],
            "transfer_regime": provenance["mode"], "dataset": provenance["dataset"],
            "data_rate": provenance["data_rate"],
            "source_run": {"path": run.path, "key": run.key, "checkpoint": chosen.checkpoint},
            "checkpoint": chosen.checkpoint,
            "selected_on": "validation " + ("SA" if which == "sa" else "RA"),
            "epoch": chosen.epoch, "val_sa": chosen.val_sa, "val_ra": chosen.val_ra,
            "test_sa": chosen.test_sa, "test_ra": chosen.test_ra,
            "ra_attack": run.result.eval_attack,
            "other_checkpoints": {other.checkpoint: {
                "note": "not exported; numbers of the other selected checkpoint",
                "epoch": other.epoch, "test_sa": other.test_sa, "test_ra": other.test_ra}},
            "layer_sparsity": tickets.layer_sparsity(masks) if masks else {},
            "pattern": _ticket_pattern(provenance["ticket"])}
    info.update(extra or {})
    return export(model, export_dir, version, info, splits.spec.image_size,
                  splits.spec.augment, sample, tflite, log, onnx)
