"""PyTorch ResNet checkpoints -> dwlt_tf Keras ResNets with the same logits.

Formats are recognized from the file's contents, never its name:

* `torchvision`: a plain state_dict (`conv1.weight`, `layer1.0.bn1.running_var`, ...).
* `robustness`: MadryLab robustness checkpoints (Salman et al. 2020):
  {"model" or "state_dict": {...}} with `module.model.<torchvision key>`, a duplicate
  under `module.attacker.model.` (ignored) and `module.normalizer.new_mean/new_std`.
* `fast_adversarial`: Wong et al. 2020 checkpoints, `{"state_dict": {"module.<key>"}}`
  or a bare state_dict with the `module.` prefix.
* `double_win_ticket`: Double-Win-LTH IMP checkpoints; pruned convs hold
  `<name>.weight_orig` and `<name>.weight_mask` (torch.nn.utils.prune), the model may
  carry `normalize.mean/std`; `init`, `optimizer`, `best_acc1`, `state_prune`, `arch`
  are ignored (`init` is the dense rewind point, not the ticket's weights).
* `double_win_transfer`: the reference's adversarial-transfer checkpoints, an
  `nn.Sequential(normalize, resnet)` (`0.mean`, `0.std`, `1.<key>`), masked or not.

Normalization: given mean/std, else the checkpoint's own normalizer, else ImageNet's for
a 1000-class checkpoint (torchvision's convention). A checkpoint with none and another
head -- e.g. the reference's standard-transfer checkpoints, plain masked ResNets whose
data loader normalized with the downstream dataset's statistics -- is refused until
mean/std are given.

Loading never executes pickled code (`torch.load(weights_only=True)`); zip and legacy
serializations both load. torch is needed only here (`pip install '.[torch]'`).
"""
import dataclasses
import hashlib
import os
from typing import Dict, Optional, Tuple

import numpy as np

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tf_keras

from dwlt_tf import data, errors, files, models, tickets

WEIGHTS_FILE = "weights.h5"
META_FILE = "converted.json"


class CheckpointError(errors.UserError, ValueError):
    """A file that cannot be converted or read as weights; the message says why."""


@dataclasses.dataclass
class TorchCheckpoint:
    """A checkpoint read into torchvision naming, framework-neutral (numpy, torch layout)."""
    path: str
    format: str
    state: Dict[str, np.ndarray]  # torchvision key -> effective value (orig * mask)
    masks: Dict[str, np.ndarray]  # conv module name -> bool mask (torch layout); {} if dense
    normalizer: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]
    sha256: str


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _torch():
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ImportError(
            "Reading PyTorch checkpoints needs torch: pip install '.[torch]' "
            "(pins torch==2.13.0, a CPU wheel)") from e
    return torch


# What torch.save writes: a zip archive, or (before torch 1.6) a pickle that starts with
# torch's magic number (protocol 2, LONG1 0x1950a86a20f9469cfc6c).
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


def _check_torch_file(path):
    """A path that is not a torch.save file fails here, saying what it is instead."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path!r} is a directory; give the checkpoint file itself "
                              "(a .pth/.pt/.ckpt written by torch.save)")
    if not os.path.exists(path):
        raise CheckpointError(f"{path!r}: no such file")
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if not head.startswith(_ZIP_MAGIC) and head != _LEGACY_MAGIC:
        what = "an empty file" if not head else f"a file starting with {head[:8]!r}"
        raise CheckpointError(
            f"{path!r} is not a PyTorch checkpoint: torch.save writes a zip archive (or a "
            f"pre-1.6 torch pickle), this is {what}")


def _load_pickle(path):
    torch = _torch()
    _check_torch_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for the same problems
        text = str(e)
        if "unsupported global" in text.lower():  # the pickle names code to run
            reason = ("it needs code execution to unpickle (refused: only tensors and "
                      "plain containers are loaded). Re-save its state_dict with "
                      "torch.save(model.state_dict(), path)")
        else:  # a torch.save file whose contents cannot be read
            reason = "the file is truncated or corrupt"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        detail = next((line for line in lines if "unsupported global" in line.lower()),
                      lines[0] if lines else "")
        raise CheckpointError(f"Cannot read {path!r}: {reason} ({type(e).__name__}: "
                              f"{detail[:200]})") from None


def _to_numpy(value):
    torch = _torch()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().float().numpy()
    return None


def _strip(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _detect(obj):
    """Returns (format, torchvision-keyed raw dict, normalizer keys) for a loaded object."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a dict of tensors, found {type(obj).__name__}")
    inner = obj
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            inner = obj[key]
            break
    keys = [k for k in inner if isinstance(k, str)]
    if any(k.startswith(("module.model.", "module.normalizer.")) for k in keys):
        sd = _strip(inner, "module.model.")
        norm = (inner.get("module.normalizer.new_mean"), inner.get("module.normalizer.new_std"))
        return "robustness", sd, norm
    if keys and all(k.startswith("module.") for k in keys):
        inner = _strip(inner, "module.")
        keys = list(inner)
        module_prefixed = True
    else:
        module_prefixed = False
    masked = any(k.endswith((".weight_orig", ".weight_mask")) for k in keys)
    if "1.conv1.weight" in inner or "1.conv1.weight_orig" in inner:
        return "double_win_transfer", _strip(inner, "1."), (inner.get("0.mean"),
                                                            inner.get("0.std"))
    if masked:
        return "double_win_ticket", inner, (inner.get("normalize.mean"),
                                            inner.get("normalize.std"))
    if module_prefixed and "conv1.weight" in inner:
        return "fast_adversarial", inner, (None, None)
    if "conv1.weight" in inner:
        return "torchvision", inner, (inner.get("normalize.mean"), inner.get("normalize.std"))
    sample = ", ".join(sorted(keys)[:6]) or "(no string keys)"
    raise CheckpointError(f"unrecognized checkpoint layout: no ResNet weights found "
                          f"(keys: {sample} ...)")


def read_torch_checkpoint(path) -> TorchCheckpoint:
    """Reads any supported checkpoint into torchvision naming (see module docstring)."""
    obj = _load_pickle(path)
    try:
        fmt, raw, (mean, std) = _detect(obj)
    except CheckpointError as e:
        raise CheckpointError(f"Cannot convert {path!r}: {e}") from None
    state, masks = {}, {}
    for key, value in raw.items():
        array = _to_numpy(value)
        if array is None or key.startswith("normalize."):
            continue
        if key.endswith(".weight_mask"):
            module = key[:-len(".weight_mask")]
            if module + ".weight_orig" not in raw:
                raise CheckpointError(f"Cannot convert {path!r}: mask {key!r} has no "
                                      f"{module + '.weight_orig'!r}")
            masks[module] = array != 0
        elif key.endswith(".weight_orig"):
            module = key[:-len(".weight_orig")]
            if module + ".weight_mask" not in raw:
                raise CheckpointError(f"Cannot convert {path!r}: {key!r} has no "
                                      f"{module + '.weight_mask'!r}")
            state[module + ".weight"] = array * (_to_numpy(raw[module + ".weight_mask"]) != 0)
        else:
            state[key] = array
    normalizer = None
    if mean is not None and std is not None:
        normalizer = (tuple(float(v) for v in _to_numpy(mean).reshape(-1)),
                      tuple(float(v) for v in _to_numpy(std).reshape(-1)))
    return TorchCheckpoint(path, fmt, state, masks, normalizer, file_sha256(path))


def _expected_torch_shapes(model):
    """torchvision key -> shape (torch layout) for every weight of a dwlt_tf ResNet."""
    shapes = {}
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            shapes[f"{layer.name}.weight"] = (cout, cin, kh, kw)
        elif isinstance(layer, tf_keras.layers.BatchNormalization):
            for suffix in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{layer.name}.{suffix}"] = tuple(layer.gamma.shape)
        elif isinstance(layer, tf_keras.layers.Dense):
            cin, cout = layer.kernel.shape
            shapes[f"{layer.name}.weight"] = (cout, cin)
            shapes[f"{layer.name}.bias"] = (cout,)
    return shapes


def _check_keys(ckpt, model, arch):
    expected = _expected_torch_shapes(model)
    present = {k: v.shape for k, v in ckpt.state.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(present))
    unexpected = sorted(set(present) - set(expected))
    mismatched = sorted(f"{k}: checkpoint {tuple(present[k])} vs model {expected[k]}"
                        for k in set(expected) & set(present)
                        if tuple(present[k]) != tuple(expected[k]))
    if missing or unexpected or mismatched:
        def show(items):
            return ", ".join(items[:8]) + (f" ... ({len(items)} in all)" if len(items) > 8 else "")
        parts = [f"Checkpoint {ckpt.path!r} ({ckpt.format}) does not fit {arch}:"]
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if mismatched:
            parts.append(f"mismatched shapes: {show(mismatched)}")
        raise CheckpointError("\n  ".join(parts))


def _assign(model, state):
    for layer in model.layers:
        name = layer.name
        if isinstance(layer, tf_keras.layers.Conv2D):
            layer.set_weights([state[f"{name}.weight"].transpose(2, 3, 1, 0)])
        elif isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.set_weights([state[f"{name}.{s}"] for s in
                               ("weight", "bias", "running_mean", "running_var")])
        elif isinstance(layer, tf_keras.layers.Dense):
            layer.set_weights([state[f"{name}.weight"].T, state[f"{name}.bias"]])


def masks_to_keras(torch_masks):
    """Conv masks (O, I, kh, kw) -> Keras kernel layout (kh, kw, I, O)."""
    return {name: m.transpose(2, 3, 1, 0).astype(bool) for name, m in torch_masks.items()}


@dataclasses.dataclass
class Converted:
    model: tf_keras.Model
    masks: Dict[str, np.ndarray]  # Keras layout; {} for dense checkpoints
    meta: dict


def convert(path, arch="resnet50", stem="imagenet", mean=None, std=None) -> Converted:
    """Reads `path` and builds the Keras model holding its weights (and its masks)."""
    ckpt = read_torch_checkpoint(path)
    if arch not in models.ARCHS:
        raise errors.ConfigError(f"Unknown arch {arch!r}; choose one of {sorted(models.ARCHS)}")
    conv1 = ckpt.state.get("conv1.weight")
    fc = ckpt.state.get("fc.weight")
    if conv1 is None or fc is None or conv1.ndim != 4 or fc.ndim != 2:
        raise CheckpointError(f"Checkpoint {path!r} ({ckpt.format}) has no conv1.weight/"
                              "fc.weight of a ResNet")
    checkpoint_stem = {7: "imagenet", 3: "cifar"}.get(conv1.shape[-1])
    if checkpoint_stem != stem:
        raise CheckpointError(f"Checkpoint {path!r} has a {conv1.shape[-1]}x{conv1.shape[-1]} "
                              f"conv1 ({checkpoint_stem or 'unknown'} stem), not the "
                              f"{stem!r} stem requested")
    if (mean is None) != (std is None):
        raise errors.ConfigError(f"Give both mean and std, or neither (got mean={mean}, "
                                 f"std={std})")
    base_width = int(conv1.shape[0])
    num_classes = int(fc.shape[0])
    if mean is not None:
        normalizer, source = (tuple(mean), tuple(std)), "argument"
    elif ckpt.normalizer is not None:
        normalizer, source = ckpt.normalizer, "checkpoint"
    elif num_classes == 1000:  # an ImageNet classifier: torchvision's convention
        normalizer, source = (data.IMAGENET_MEAN, data.IMAGENET_STD), "imagenet"
    else:
        # E.g. the reference's standard-transfer checkpoints: a plain (masked) ResNet
        # trained on inputs its data loader normalized with the downstream dataset's
        # statistics, which the file does not record.
        raise CheckpointError(
            f"Checkpoint {path!r} ({ckpt.format}, {num_classes} classes) holds no "
            "normalization, and it is not an ImageNet classifier whose normalization could "
            "be assumed: give the mean and std its inputs were normalized with, e.g. "
            "--mean=0.4914,0.4822,0.4465 --std=0.2470,0.2435,0.2616 for CIFAR-10 "
            f"(data.STATS has {sorted(data.STATS)})")
    model = models.build_resnet(arch, num_classes=num_classes, stem=stem,
                                mean=normalizer[0], std=normalizer[1], base_width=base_width)
    _check_keys(ckpt, model, arch)
    _assign(model, ckpt.state)
    masks = masks_to_keras(ckpt.masks)
    meta = {
        "source": os.path.abspath(path), "source_sha256": ckpt.sha256, "format": ckpt.format,
        "arch": arch, "stem": stem, "base_width": base_width, "num_classes": num_classes,
        "mean": list(normalizer[0]), "std": list(normalizer[1]), "normalization": source,
        "masked": bool(masks), "dwlt_tf_version": dwlt_tf.__version__,
    }
    if masks:
        meta["sparsity"] = tickets.sparsity(masks)
    return Converted(model, masks, meta)


def keras_resnet_from_torch(path, arch="resnet50", stem="imagenet", mean=None,
                            std=None) -> tf_keras.Model:
    """The Keras ResNet holding the weights of the PyTorch checkpoint at `path`.

    Takes NHWC float32 images in [0, 1] of any size and returns the same logits as the
    PyTorch model. Normalization: explicit mean/std, else the checkpoint's own
    normalizer, else ImageNet's. Masked (ticket) checkpoints give kernels whose pruned
    entries are exactly zero; `convert()` also returns the masks.
    """
    return convert(path, arch, stem, mean, std).model


def save_converted(output_dir, converted: Converted):
    """Writes weights.h5 + converted.json (+ the ticket's masks) atomically into a new dir."""
    if os.path.exists(output_dir):
        raise errors.OutputExistsError(f"Output {output_dir!r} already exists; choose a new "
                                       "path")
    with files.atomic_directory(output_dir) as tmp:
        converted.model.save_weights(os.path.join(tmp, WEIGHTS_FILE))
        files.write_json(os.path.join(tmp, META_FILE), converted.meta)
        if converted.masks:
            tickets.save(os.path.join(tmp, "ticket"), converted.masks,
                         {"source": converted.meta["source"],
                          "source_sha256": converted.meta["source_sha256"],
                          "format": converted.meta["format"], "arch": converted.meta["arch"]})
    return os.path.abspath(output_dir)


_META_KEYS = ("arch", "stem", "base_width", "num_classes", "mean", "std", "source_sha256")


def load_meta(output_dir) -> dict:
    """The JSON sidecar of converted weights (format, arch, normalization, sha256, ...)."""
    meta_path = os.path.join(output_dir, META_FILE)
    if os.path.isfile(output_dir):
        raise CheckpointError(
            f"{output_dir!r} is a file; converted weights are a directory (made by "
            "trainers/convert_weights.py; a PyTorch file is converted with --checkpoint)")
    if not os.path.isfile(meta_path):
        where = "no such directory" if not os.path.exists(output_dir) else \
            f"{META_FILE} missing"
        raise CheckpointError(
            f"{output_dir!r} holds no converted weights ({where}); create it "
            "with trainers/convert_weights.py --checkpoint=<file.pth> --output=<dir>")
    try:
        meta = files.read_json(meta_path)
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{meta_path!r} is damaged (not JSON): convert the weights "
                              "again") from None
    missing = [k for k in _META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise CheckpointError(f"{meta_path!r} lacks {missing}: not converted weights of "
                              "this dwlt_tf; convert them again")
    return meta


def weights_sha256(model) -> str:
    """sha256 of a model's weights by value (names, shapes, bytes), not of a file:
    the same weights give the same hash however and whenever they were saved."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(weight.numpy())
        digest.update(f"{weight.name}:{value.dtype}:{value.shape}\n".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def weights_identity(meta) -> dict:
    """Converted (or study-trained) weights' part of a run identity, from their meta."""
    return {"sha256": meta["source_sha256"], "arch": meta["arch"], "stem": meta["stem"],
            "base_width": meta["base_width"], "mean": meta["mean"], "std": meta["std"]}


def load_converted(output_dir) -> Converted:
    """Reads what `save_converted` wrote (no torch needed)."""
    meta = load_meta(output_dir)
    model = models.build_resnet(meta["arch"], num_classes=meta["num_classes"],
                                stem=meta["stem"], mean=meta["mean"], std=meta["std"],
                                base_width=meta["base_width"])
    path = os.path.join(output_dir, WEIGHTS_FILE)
    try:
        model.load_weights(path)
    except (OSError, ValueError) as e:  # h5py: missing/truncated file; Keras: shapes
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        raise CheckpointError(f"cannot load {path!r} ({first[:160]}): the converted weights "
                              "are missing or damaged; convert them again") from None
    masks = {}
    if tickets.is_ticket(os.path.join(output_dir, "ticket")):
        masks, _ = tickets.load(os.path.join(output_dir, "ticket"))
    return Converted(model, masks, meta)
