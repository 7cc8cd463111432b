"""Tests for dwlt_tf.export: TF Serving SavedModels of tickets."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from conftest import REPO
from dwlt_tf import export, models, pruning, pruning_wrapper, tickets

PNG_DIR = os.path.join(REPO, "data", "cifar10_png")
BIN = os.path.dirname(sys.executable)


def _ticket_model(sparsity=0.7, seed=0):
    tf_keras.utils.set_random_seed(seed)
    model = pruning_wrapper.wrap(models.build_resnet("resnet18", 10, "cifar", base_width=8))
    masks = pruning.global_magnitude_masks(pruning_wrapper.get_kernels(model), None, sparsity)
    pruning_wrapper.set_masks(model, masks)
    return model, masks


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, masks = _ticket_model()
    root = str(tmp_path_factory.mktemp("serving"))
    sample = np.random.default_rng(1).random((4, 32, 32, 3), np.float32)
    path, info = export.export(model, root, 1, {"architecture": "resnet18",
                                                "class_names": [str(i) for i in range(10)]},
                               image_size=32, augment="cifar", sample=sample, tflite=True,
                               log=lambda *_: None)
    return model, masks, root, path, info, sample


def test_layout_and_ticket_json(exported):
    model, masks, root, path, info, _ = exported
    assert path == os.path.join(root, "1")
    assert sorted(os.listdir(path)) == ["assets", "fingerprint.pb", "model.tflite",
                                        "saved_model.pb", "variables"]
    with open(os.path.join(path, "assets", "ticket.json")) as f:
        recorded = json.load(f)
    assert recorded["sparsity"] == pytest.approx(tickets.sparsity(masks), abs=1e-12)
    assert recorded["check_sparsity"] == recorded["sparsity"]
    assert recorded["class_names"][0] == "0" and recorded["image_size"] == 32
    assert recorded["saved_model_gzip_bytes"] < recorded["saved_model_bytes"]
    assert recorded["tflite_bytes"] > 0 and recorded["check_tflite_max_abs_logit_delta"] < 1e-3
    assert not [n for n in os.listdir(root) if n.startswith(".tmp")]


_RELOAD = r"""
import json, sys
import numpy as np
import tensorflow as tf
path, sample = sys.argv[1], np.load(sys.argv[2])
loaded = tf.saved_model.load(path)
out = loaded.signatures["serving_default"](images=tf.constant(sample))
kernels = [v.numpy() for v in loaded.conv_kernels]
zeros = sum(int((k == 0).sum()) for k in kernels)
total = sum(k.size for k in kernels)
sigs = {name: sorted(fn.structured_outputs) for name, fn in loaded.signatures.items()}
print(json.dumps({"logits": out["logits"].numpy().tolist(), "sparsity": zeros / total,
                  "signatures": sigs, "dwlt_tf_imported": "dwlt_tf" in sys.modules,
                  "inputs": {n: str(fn.structured_input_signature[1]) for n, fn in
                             loaded.signatures.items()}}))
"""


def test_reloads_without_dwlt_tf_with_equal_outputs_and_sparsity(exported, tmp_path):
    model, masks, root, path, info, sample = exported
    np.save(tmp_path / "sample.npy", sample)
    out = subprocess.run([sys.executable, "-c", _RELOAD, path, str(tmp_path / "sample.npy")],
                         capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["dwlt_tf_imported"] is False
    np.testing.assert_allclose(np.array(result["logits"]), model(sample).numpy(),
                               rtol=1e-5, atol=1e-5)
    assert result["sparsity"] == pytest.approx(tickets.sparsity(masks), abs=1e-12)
    assert result["signatures"] == {"serve_encoded": ["classes", "logits", "probabilities"],
                                    "serving_default": ["classes", "logits", "probabilities"]}
    assert "images" in result["inputs"]["serving_default"]
    assert "dtype=tf.float32" in result["inputs"]["serving_default"]
    assert "image_bytes" in result["inputs"]["serve_encoded"]
    readme = open(os.path.join(REPO, "README.md")).read()
    assert "serving_default" in readme and "serve_encoded" in readme


_SHAPE = r"images must be float32 \[N, 32, 32, 3\]; got shape"


@pytest.mark.parametrize("bad,match", [
    (np.zeros((32, 32, 3), np.float32), _SHAPE),             # wrong rank
    (np.zeros((1, 32, 32, 1), np.float32), _SHAPE),          # wrong channels
    (np.zeros((1, 64, 64, 3), np.float32), _SHAPE),          # wrong size
    (np.zeros((1, 32, 32, 3), np.int32), "float32|int32"),   # wrong dtype
])
def test_wrong_inputs_are_rejected(exported, bad, match):
    path = exported[3]
    fn = tf.saved_model.load(path).signatures["serving_default"]
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match=match):
        fn(images=tf.constant(bad))


def test_out_of_range_pixels_fail_clearly(exported):
    fn = tf.saved_model.load(exported[3]).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"pixels in \[0, 1\]"):
        fn(images=tf.constant(np.full((1, 32, 32, 3), 255.0, np.float32)))


def test_saved_model_cli_runs_and_rejects(exported, tmp_path):
    path = exported[3]
    cli = os.path.join(BIN, "saved_model_cli")
    show = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True,
                          timeout=300)
    assert show.returncode == 0 and "serve_encoded" in show.stdout
    np.save(tmp_path / "good.npy", np.full((2, 32, 32, 3), 0.5, np.float32))
    np.save(tmp_path / "bad.npy", np.zeros((2, 32, 32, 1), np.float32))

    def run(name):
        return subprocess.run([cli, "run", "--dir", path, "--tag_set", "serve",
                               "--signature_def", "serving_default", "--inputs",
                               f"images={tmp_path / name}"],
                              capture_output=True, text=True, timeout=300)
    ok = run("good.npy")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "classes" in ok.stdout
    bad = run("bad.npy")
    assert bad.returncode != 0
    assert "images must be float32 [N, 32, 32, 3]; got shape" in bad.stderr


def test_encoded_images_match_the_float_path(exported):
    path = exported[3]
    loaded = tf.saved_model.load(path)
    names = sorted(n for n in os.listdir(PNG_DIR) if n.endswith(".png"))[:4]
    blobs = [open(os.path.join(PNG_DIR, n), "rb").read() for n in names]
    encoded = loaded.signatures["serve_encoded"](image_bytes=tf.constant(blobs))
    images = np.stack([tf.io.decode_png(b, 3).numpy() for b in blobs]).astype(np.float32) / 255
    plain = loaded.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(encoded["logits"].numpy(), plain["logits"].numpy(), atol=1e-5)
    np.testing.assert_array_equal(encoded["classes"].numpy(), plain["classes"].numpy())


def test_second_export_to_the_same_version_is_refused(exported):
    model, _, root, path, _, _ = exported
    stamp = os.path.getmtime(os.path.join(path, "saved_model.pb"))
    with pytest.raises(FileExistsError, match="never overwritten"):
        export.export(model, root, 1, {}, image_size=32, log=lambda *_: None)
    assert os.path.getmtime(os.path.join(path, "saved_model.pb")) == stamp


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    model, _ = _ticket_model()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(tf.saved_model, "save", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export(model, str(tmp_path), 3, {}, image_size=32, log=lambda *_: None)
    assert os.listdir(tmp_path) == []


_SLOW_EXPORT = r"""
import sys, time
import numpy as np
import tensorflow as tf
import dwlt_tf
from dwlt_tf import export, models
original = tf.saved_model.save
def slow(*args, **kwargs):
    original(*args, **kwargs)
    print("saved", flush=True)
    time.sleep(120)
tf.saved_model.save = slow
model = models.build_resnet("resnet18", 10, "cifar", base_width=8)
export.export(model, sys.argv[1], 7, {}, image_size=32)
"""


def test_killed_export_leaves_no_version_directory(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_EXPORT, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "saved"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not os.path.exists(tmp_path / "7")
    leftovers = os.listdir(tmp_path)
    assert all(name.startswith(".tmp-") for name in leftovers)  # never a version name
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_sparse_ticket_compresses_better_than_dense(tmp_path):
    dense = models.build_resnet("resnet18", 10, "cifar", base_width=8)
    sparse, _ = _ticket_model(0.9)
    _, dense_info = export.export(dense, str(tmp_path / "dense"), 1, {}, image_size=32,
                                  log=lambda *_: None)
    _, sparse_info = export.export(sparse, str(tmp_path / "sparse"), 1, {}, image_size=32,
                                   log=lambda *_: None)
    assert dense_info["sparsity"] == 0.0
    ratio = sparse_info["saved_model_gzip_bytes"] / dense_info["saved_model_gzip_bytes"]
    assert ratio < 0.5, ratio
