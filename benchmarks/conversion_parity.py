r"""Conversion parity and speed: max |logit delta| Keras vs PyTorch per format and size.

Builds ResNets in PyTorch (torchvision layout, non-trivial BatchNorm statistics), saves
them in every supported checkpoint format, converts with `dwlt_tf.convert` and compares
logits on the same random batch. Also times the conversion of a ResNet-50. Prints one
JSON line.

  python benchmarks/conversion_parity.py
"""
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from torch.nn.utils import prune

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
import dwlt_tf  # noqa: E402,F401
from dwlt_tf import convert  # noqa: E402
from torch_resnet import Normalize, ResNet, randomize_batchnorm  # noqa: E402

NORM = ((0.4, 0.45, 0.5), (0.2, 0.25, 0.3))


def _checkpoint(fmt, model):
    sd = model.state_dict()
    if fmt == "torchvision":
        return sd
    if fmt == "robustness":
        return {"model": {**{f"module.model.{k}": v for k, v in sd.items()},
                          **{f"module.attacker.model.{k}": v for k, v in sd.items()},
                          "module.normalizer.new_mean": torch.tensor(NORM[0]).view(3, 1, 1),
                          "module.normalizer.new_std": torch.tensor(NORM[1]).view(3, 1, 1)},
                "epoch": 1}
    if fmt == "fast_adversarial":
        return {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
    if fmt == "double_win_ticket":
        return {"state_dict": {**sd, "normalize.mean": torch.tensor(NORM[0]),
                               "normalize.std": torch.tensor(NORM[1])}, "init": sd}
    raise ValueError(fmt)


def _torch_logits(model, images, normalizer):
    mean, std = normalizer
    x = torch.tensor(images).permute(0, 3, 1, 2)
    x = (x - torch.tensor(mean)[None, :, None, None]) / torch.tensor(std)[None, :, None, None]
    with torch.no_grad():
        return model(x).numpy()


def main():
    rows = []
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with tempfile.TemporaryDirectory() as tmp:
        for arch, stem, sizes in (("resnet18", "cifar", (32,)), ("resnet50", "imagenet", (64, 224))):
            for fmt in ("torchvision", "robustness", "fast_adversarial", "double_win_ticket"):
                torch.manual_seed(0)
                model = randomize_batchnorm(ResNet(arch, 10, stem)).eval()
                if fmt == "double_win_ticket":
                    prune.global_unstructured(
                        [(m, "weight") for m in model.modules() if isinstance(m, torch.nn.Conv2d)],
                        pruning_method=prune.L1Unstructured, amount=1 - 0.8 ** 10)
                path = os.path.join(tmp, f"{arch}-{fmt}.pth")
                torch.save(_checkpoint(fmt, model), path)
                start = time.perf_counter()
                normalizer = NORM if fmt in ("robustness", "double_win_ticket") else imagenet
                # (10-class checkpoints without a normalizer need it given explicitly)
                given = () if fmt in ("robustness", "double_win_ticket") else imagenet
                keras_model = convert.keras_resnet_from_torch(path, arch, stem, *given)
                seconds = time.perf_counter() - start
                for size in sizes:
                    images = np.random.default_rng(1).random((4, size, size, 3), np.float32)
                    ref = _torch_logits(model, images, normalizer)
                    got = keras_model(images, training=False).numpy()
                    rows.append({"arch": arch, "stem": stem, "format": fmt, "image_size": size,
                                 "max_abs_delta": float(np.abs(got - ref).max()),
                                 "max_abs_logit": float(np.abs(ref).max()),
                                 "argmax_equal": bool((got.argmax(1) == ref.argmax(1)).all()),
                                 "convert_seconds": seconds})
    print(json.dumps({"results": rows, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
