"""The PyTorch side of the AutoAttack comparison in test_audit.py, in its own process.

Trains a width-8 ResNet-18 (CIFAR stem) with FGSM-RS on the bundled images of classes
0-4, saves its state dict, runs torchattacks' AutoAttack (standard version) on the
bundled test images of the same classes and prints one JSON line: {"sa", "ra", "seconds"}.

Why a separate process: torch's oneDNN (mkldnn) CPU kernels crash (double free) in
FAB's backward pass on these small-channel convolutions when TensorFlow's oneDNN is
loaded in the same process, so the reference runs alone with mkldnn disabled.

    python tests/autoattack_reference.py OUTPUT.pth
"""
import json
import os
import sys
import time

import numpy as np
from PIL import Image

# torch is imported inside the functions: test_audit.py imports `bundled` from here into
# a TensorFlow process. conftest is not imported: it loads TensorFlow.
TESTS = os.path.dirname(os.path.abspath(__file__))
BUNDLED_CIFAR = os.path.join(os.path.dirname(TESTS), "data", "cifar10_jpeg_small")

EPS = 8 / 255
CLASSES = 5


def bundled(split):
    """The bundled CIFAR-10 JPEGs of classes 0..CLASSES-1 as PIL decodes them."""
    images, labels = [], []
    root = os.path.join(BUNDLED_CIFAR, split)
    for label, name in enumerate(sorted(os.listdir(root))[:CLASSES]):
        for file in sorted(os.listdir(os.path.join(root, name))):
            images.append(np.asarray(Image.open(os.path.join(root, name, file)).convert("RGB")))
            labels.append(label)
    return np.stack(images).astype(np.float32) / 255.0, np.array(labels)


def _tensors(split):
    import torch  # pylint: disable=import-outside-toplevel
    images, labels = bundled(split)
    return torch.tensor(images).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def train(path):
    """FGSM-RS (Wong et al. 2020) for 6 epochs: robust enough to leave RA to measure."""
    import torch  # pylint: disable=import-outside-toplevel
    sys.path.insert(0, TESTS)
    from torch_resnet import Normalize, ResNet  # pylint: disable=import-outside-toplevel
    torch.manual_seed(0)
    model = torch.nn.Sequential(Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
                                ResNet("resnet18", CLASSES, "cifar", 8))
    x, y = _tensors("train")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        model.train()
        for idx in torch.randperm(len(y), generator=generator).split(64):
            xb, yb = x[idx], y[idx]
            delta = (torch.rand(xb.shape, generator=generator) * 2 - 1) * EPS
            delta.requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model((xb + delta).clamp(0, 1)), yb)
            grad, = torch.autograd.grad(loss, delta)
            xa = (xb + (delta + 1.25 * EPS * grad.sign()).clamp(-EPS, EPS)).clamp(0, 1).detach()
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(xa), yb).backward()
            optimizer.step()
    model.eval()
    torch.save(model.state_dict(), path)
    return model


def main(path):
    import torch  # pylint: disable=import-outside-toplevel
    torch.backends.mkldnn.enabled = False
    torch.set_num_threads(os.cpu_count() or 1)
    import torchattacks  # pylint: disable=import-outside-toplevel
    model = train(path)
    x, y = _tensors("test")
    start = time.time()
    attack = torchattacks.AutoAttack(model, norm="Linf", eps=EPS, version="standard",
                                     n_classes=CLASSES, seed=0)
    adversarial = attack(x, y)
    with torch.no_grad():
        ra = 100.0 * (model(adversarial).argmax(1) == y).float().mean().item()
        sa = 100.0 * (model(x).argmax(1) == y).float().mean().item()
    print(json.dumps({"sa": sa, "ra": ra, "seconds": round(time.time() - start, 1)}))


if __name__ == "__main__":
    main(sys.argv[1])
