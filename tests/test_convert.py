"""Tests for dwlt_tf.convert: PyTorch checkpoints -> Keras, numerically identical."""
import json
import os
import pickle
import time

import numpy as np
import pytest
import torch
from torch.nn.utils import prune

from dwlt_tf import convert, data, tickets
from torch_resnet import Normalize, ResNet, randomize_batchnorm

ROBUST_MEAN = (0.4, 0.45, 0.5)
ROBUST_STD = (0.2, 0.25, 0.3)


def _torch_model(arch, stem, num_classes=10, base_width=64, seed=0):
    torch.manual_seed(seed)
    return randomize_batchnorm(ResNet(arch, num_classes, stem, base_width), seed).eval()


def _prune_globally(model, amount, seed=0):
    torch.manual_seed(seed)
    params = [(m, "weight") for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    return model


def _save(obj, path, legacy=False):
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return str(path)


def _write(fmt, model, path, legacy=False):
    """Saves `model` the way each source framework lays out its checkpoints."""
    sd = model.state_dict()
    if fmt == "torchvision":
        obj = sd
    elif fmt == "robustness":
        obj = {"model": {**{f"module.model.{k}": v for k, v in sd.items()},
                         **{f"module.attacker.model.{k}": v.clone() for k, v in sd.items()},
                         "module.normalizer.new_mean": torch.tensor(ROBUST_MEAN).view(3, 1, 1),
                         "module.normalizer.new_std": torch.tensor(ROBUST_STD).view(3, 1, 1)},
               "epoch": 90, "schedule": None}
    elif fmt == "fast_adversarial":
        obj = {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 15}
    elif fmt == "fast_adversarial_bare":
        obj = {f"module.{k}": v for k, v in sd.items()}
    elif fmt == "double_win_ticket":
        # main_adv.py's model: the reference resnet50 with a `normalize` module.
        obj = {"state_dict": {**sd, "normalize.mean": torch.tensor(ROBUST_MEAN),
                              "normalize.std": torch.tensor(ROBUST_STD)},
               "init": {k: torch.zeros_like(v) for k, v in sd.items()},
               "optimizer": {"state": {}, "param_groups": []}, "best_acc1": torch.tensor(1.0),
               "state_prune": 3, "arch": "resnet50", "epoch": 90}
    elif fmt == "double_win_transfer":
        seq = torch.nn.Sequential(Normalize(ROBUST_MEAN, ROBUST_STD), model)
        obj = {"state_dict": seq.state_dict(), "best_sa": 0.0, "epoch": 3}
    else:
        raise ValueError(fmt)
    return _save(obj, path, legacy)


def _torch_logits(model, images, normalizer=None):
    mean, std = normalizer or ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    x = torch.tensor(images).permute(0, 3, 1, 2)
    x = (x - torch.tensor(mean)[None, :, None, None]) / torch.tensor(std)[None, :, None, None]
    with torch.no_grad():
        return model(x).numpy()


def _assert_same_logits(keras_logits, torch_logits):
    tol = 1e-4 * max(1.0, float(np.abs(torch_logits).max()))
    delta = float(np.abs(keras_logits - torch_logits).max())
    assert delta <= tol, f"max |delta| {delta} > {tol}"
    np.testing.assert_array_equal(keras_logits.argmax(1), torch_logits.argmax(1))
    return delta


FORMATS = ["torchvision", "robustness", "fast_adversarial", "fast_adversarial_bare",
           "double_win_ticket", "double_win_transfer"]
_NORMALIZER = {"robustness": (ROBUST_MEAN, ROBUST_STD),
               "double_win_ticket": (ROBUST_MEAN, ROBUST_STD),
               "double_win_transfer": (ROBUST_MEAN, ROBUST_STD)}


@pytest.mark.parametrize("fmt", FORMATS)
def test_cifar_stem_32px_every_format(tmp_path, fmt):
    model = _torch_model("resnet18", "cifar", base_width=16)
    if fmt.startswith("double_win"):
        _prune_globally(model, 0.5)
    path = _write(fmt, model, tmp_path / "ckpt.pth", legacy=fmt == "fast_adversarial")
    # A 10-class checkpoint without its own normalizer needs mean/std spelled out.
    given = {} if fmt in _NORMALIZER else dict(mean=data.IMAGENET_MEAN, std=data.IMAGENET_STD)
    converted = convert.convert(path, arch="resnet18", stem="cifar", **given)
    assert converted.meta["format"] == fmt.replace("_bare", "")
    assert converted.meta["normalization"] == ("argument" if given else "checkpoint")
    images = np.random.RandomState(1).rand(4, 32, 32, 3).astype("float32")
    _assert_same_logits(converted.model(images, training=False).numpy(),
                        _torch_logits(model, images, _NORMALIZER.get(fmt)))


@pytest.mark.parametrize("fmt,size,legacy", [
    ("torchvision", 224, False), ("robustness", 64, True), ("fast_adversarial", 224, False),
    ("double_win_ticket", 224, False), ("double_win_ticket", 64, True)])
def test_resnet50_imagenet_stem(tmp_path, fmt, size, legacy):
    model = _torch_model("resnet50", "imagenet", num_classes=1000)
    if fmt == "double_win_ticket":
        _prune_globally(model, 1 - 0.8 ** 3)
    path = _write(fmt, model, tmp_path / "ckpt.pth", legacy)
    start = time.time()
    keras_model = convert.keras_resnet_from_torch(path, arch="resnet50", stem="imagenet")
    assert time.time() - start < 120
    assert keras_model.input_shape == (None, None, None, 3)
    images = np.random.RandomState(2).rand(2, size, size, 3).astype("float32")
    _assert_same_logits(keras_model(images, training=False).numpy(),
                        _torch_logits(model, images, _NORMALIZER.get(fmt)))


def test_ticket_zeros_match_torch_masks_exactly(tmp_path):
    model = _prune_globally(_torch_model("resnet18", "imagenet", base_width=16), 0.6)
    path = _write("double_win_ticket", model, tmp_path / "t.pth")
    converted = convert.convert(path, arch="resnet18", stem="imagenet")
    torch_masks = {n: m.weight_mask.numpy() for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Conv2d)}
    assert set(converted.masks) == set(torch_masks)
    for name, mask in torch_masks.items():
        kernel = converted.model.get_layer(name).kernel.numpy()
        np.testing.assert_array_equal(kernel != 0, mask.transpose(2, 3, 1, 0) != 0)
        np.testing.assert_array_equal(converted.masks[name], mask.transpose(2, 3, 1, 0) != 0)
    assert converted.meta["sparsity"] == pytest.approx(0.6, abs=1e-6)


def test_reference_standard_transfer_checkpoint_needs_its_normalization(tmp_path):
    # main_std_eval.py saves a plain masked ResNet with a downstream head; its inputs
    # were normalized by the data loader with CIFAR-10's statistics, not recorded.
    model = _prune_globally(_torch_model("resnet18", "cifar", base_width=8), 0.5)
    torch.save({"state_dict": model.state_dict(), "best_sa": 50.0},
               str(tmp_path / "std_transfer.pth"))
    path = str(tmp_path / "std_transfer.pth")
    with pytest.raises(convert.CheckpointError, match=r"10 classes\) holds no normalization"):
        convert.convert(path, "resnet18", "cifar")
    cifar10 = data.STATS["cifar10"]
    converted = convert.convert(path, "resnet18", "cifar", *cifar10)
    assert converted.meta["format"] == "double_win_ticket" and converted.masks
    images = np.random.RandomState(4).rand(2, 32, 32, 3).astype("float32")
    _assert_same_logits(converted.model(images).numpy(), _torch_logits(model, images, cifar10))


def test_explicit_normalization_overrides_checkpoint(tmp_path):
    model = _torch_model("resnet18", "cifar", base_width=8)
    path = _write("robustness", model, tmp_path / "r.pth")
    converted = convert.convert(path, "resnet18", "cifar", mean=(0.5, 0.5, 0.5),
                                std=(0.5, 0.5, 0.5))
    assert converted.meta["normalization"] == "argument"
    np.testing.assert_allclose(converted.model.get_layer("normalize").mean.numpy(), 0.5)
    images = np.random.RandomState(3).rand(2, 32, 32, 3).astype("float32")
    _assert_same_logits(converted.model(images).numpy(),
                        _torch_logits(model, images, ((0.5,) * 3, (0.5,) * 3)))


def test_save_and_load_converted_roundtrip(tmp_path):
    model = _prune_globally(_torch_model("resnet18", "cifar", base_width=8), 0.3)
    path = _write("double_win_ticket", model, tmp_path / "t.pth")
    converted = convert.convert(path, "resnet18", "cifar")
    out = convert.save_converted(str(tmp_path / "out"), converted)
    loaded = convert.load_converted(out)
    assert loaded.meta["source_sha256"] == convert.file_sha256(path)
    images = np.random.RandomState(4).rand(2, 32, 32, 3).astype("float32")
    np.testing.assert_array_equal(loaded.model(images).numpy(), converted.model(images).numpy())
    for name in converted.masks:
        np.testing.assert_array_equal(loaded.masks[name], converted.masks[name])
    masks, meta = tickets.load(os.path.join(out, "ticket"))
    torch_masks = [m.weight_mask for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    zeros = sum(int((m == 0).sum()) for m in torch_masks)
    assert meta["sparsity"] == zeros / sum(m.numel() for m in torch_masks)
    assert meta["sparsity"] == pytest.approx(0.3, abs=1e-4)
    with pytest.raises(FileExistsError):
        convert.save_converted(out, converted)


# ------------------------------------------------------------------ bad inputs

class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _bad_file(kind, tmp_path):
    path = tmp_path / f"{kind}.pth"
    if kind == "not_a_checkpoint":
        path.write_text("this is a text file, not a checkpoint\n")
    elif kind == "truncated":
        good = _write("torchvision", _torch_model("resnet18", "cifar", base_width=8),
                      tmp_path / "good.pth")
        with open(good, "rb") as f:
            blob = f.read()
        path.write_bytes(blob[: len(blob) // 2])
    elif kind == "code_execution":  # a real torch.save file whose pickle runs code
        import torch  # pylint: disable=import-outside-toplevel
        torch.save({"conv1.weight": _Evil()}, str(path))
    elif kind == "plain_pickle":  # torch.load cannot read it, whatever it holds
        with open(path, "wb") as f:
            pickle.dump({"conv1.weight": _Evil()}, f)
    elif kind == "directory":
        path.mkdir()
    elif kind == "wrong_arch":
        _write("torchvision", _torch_model("resnet18", "imagenet", num_classes=1000), path)
    elif kind == "mask_without_orig":
        model = _prune_globally(_torch_model("resnet18", "cifar", base_width=8), 0.2)
        sd = model.state_dict()
        del sd["layer1.0.conv1.weight_orig"]
        _save(sd, path)
    return str(path)


@pytest.mark.parametrize("kind,match", [
    ("not_a_checkpoint", "not a PyTorch checkpoint"),
    ("truncated", "truncated or corrupt"),
    ("code_execution", "needs code execution"),
    ("plain_pickle", r"is not a PyTorch checkpoint: torch.save writes a zip archive"),
    ("directory", "is a directory; give the checkpoint file itself"),
    ("wrong_arch", "does not fit resnet50"),
    ("mask_without_orig", "'layer1.0.conv1.weight_mask' has no 'layer1.0.conv1.weight_orig'"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, kind, match, capfd):
    path = _bad_file(kind, tmp_path)
    out = tmp_path / "out"
    arch, stem = ("resnet50", "imagenet") if kind == "wrong_arch" else ("resnet18", "cifar")
    with pytest.raises(convert.CheckpointError, match=match) as err:
        converted = convert.convert(path, arch=arch, stem=stem)
        convert.save_converted(str(out), converted)
    assert path in str(err.value)
    assert not out.exists()
    assert "pwned" not in capfd.readouterr().out
    if kind == "wrong_arch":
        text = str(err.value)
        assert "missing keys: layer1.0.bn3.bias" in text or "missing keys:" in text
        assert "layer1.0.conv3.weight" in text
        assert "mismatched shapes" in text


def test_wrong_stem_is_named(tmp_path):
    path = _write("torchvision", _torch_model("resnet18", "cifar", base_width=8),
                  tmp_path / "c.pth")
    with pytest.raises(convert.CheckpointError, match="3x3 conv1 .cifar stem"):
        convert.convert(path, arch="resnet18", stem="imagenet")


def test_convert_weights_binary(tmp_path):
    import subprocess
    import sys
    from conftest import REPO
    model = _prune_globally(_torch_model("resnet18", "cifar", base_width=8), 0.5)
    path = _write("double_win_ticket", model, tmp_path / "ticket.pth")
    binary = os.path.join(REPO, "trainers", "convert_weights.py")
    ok = subprocess.run([sys.executable, binary, f"--checkpoint={path}", "--arch=resnet18",
                         "--stem=cifar", f"--output={tmp_path / 'out'}"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "double_win_ticket checkpoint" in ok.stdout and "sparsity 50.00%" in ok.stdout
    meta = json.load(open(tmp_path / "out" / convert.META_FILE))
    assert meta["source_sha256"] == convert.file_sha256(path) and meta["masked"] is True
    bad = subprocess.run([sys.executable, binary, f"--checkpoint={path}", "--arch=resnet50",
                          "--stem=cifar", f"--output={tmp_path / 'bad'}"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "convert_weights: error:" in bad.stderr
    assert "does not fit resnet50" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_missing_torch_is_a_clear_message(tmp_path):
    import subprocess
    import sys
    code = ("import sys; sys.modules['torch'] = None\n"
            "from dwlt_tf import convert\n"
            "try:\n"
            "    convert.read_torch_checkpoint('x.pth')\n"
            "except ImportError as e:\n"
            "    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=str(tmp_path))
    assert "ERR Reading PyTorch checkpoints needs torch: pip install '.[torch]'" in out.stdout
