r"""The same steps in PyTorch, for a side-by-side comparison (torch is optional).

--mode=train, the reference's step (main_adv_eval.py): L-inf PGD with random start
crafted under `model.train()` (advertorch's LinfPGDAttack, reimplemented here: sign of
the input gradient, projection, clip to [0, 1]), then forward, cross-entropy, backward
and SGD(momentum 0.9, weight decay 5e-4). --variant says how the model is pruned:
`reference` -- torch.nn.utils.prune, as the reference (weight = weight_orig * weight_mask
recomputed by a forward pre-hook at every forward); `hook_free` -- plain dense modules
whose pruned weights are re-zeroed after each update (what a performance-minded PyTorch
user writes). --mode=eval: PGD-`attack_steps` under `model.eval()` plus the clean and
adversarial forward passes, as the reference's validate_adv. Prints one final JSON line.

  python benchmarks/torch_adversarial_training.py --arch=resnet50 --stem=cifar \
      --image_size=32 --batch_size=64 --attack_steps=10 --precision=bfloat16

On a GPU: --device=cuda --precision=float16 (autocast float16).
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils import prune

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
from torch_resnet import ResNet  # noqa: E402  (the torchvision layout, without torchvision)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet50"])
    parser.add_argument("--stem", default="cifar", choices=["imagenet", "cifar"])
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--attack_steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", default="float32",
                        choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--mode", default="train", choices=["train", "eval"])
    parser.add_argument("--variant", default="reference", choices=["reference", "hook_free"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)

    model = ResNet(args.arch, 10, args.stem)
    convs = [(m, "weight") for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    masks = []
    if args.sparsity:
        prune.global_unstructured(convs, pruning_method=prune.L1Unstructured,
                                  amount=args.sparsity)
        if args.variant == "hook_free":  # same masks, baked in; no hooks
            for module, name in convs:
                mask = module.weight_mask.detach().clone()
                prune.remove(module, name)
                masks.append((module.weight, mask))
    model.to(device)
    masks = [(w, m.to(device)) for w, m in masks]
    mean = torch.tensor([0.4914, 0.4822, 0.4465], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616], device=device).view(1, 3, 1, 1)
    half = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(args.precision)

    def forward(x):
        with torch.autocast(args.device, dtype=half or torch.float32, enabled=half is not None):
            return model((x - mean) / std).float()

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    eps, alpha = 8 / 255, 2 / 255
    gen = torch.Generator().manual_seed(0)

    scaler = torch.amp.GradScaler(args.device, enabled=args.precision == "float16")

    def attack(images, labels):
        for p in model.parameters():  # advertorch's ctx_noparamgrad
            p.requires_grad_(False)
        delta = (torch.rand(images.shape, generator=gen).to(device) * 2 - 1) * eps
        adv = (images + delta).clamp(0, 1)
        for _ in range(args.attack_steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(forward(adv), labels)
            grad, = torch.autograd.grad(loss, adv)
            adv = adv.detach() + alpha * grad.sign()
            adv = (images + (adv - images).clamp(-eps, eps)).clamp(0, 1)
        for p in model.parameters():
            p.requires_grad_(True)
        return adv.detach()

    def train_step(images, labels):
        model.train()
        if args.attack_steps:
            images = attack(images, labels)
        loss = F.cross_entropy(forward(images), labels)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():
            for weight, mask in masks:  # hook_free: pruned weights back to zero
                weight.mul_(mask)
        return loss.item()

    def eval_step(images, labels):
        model.eval()
        with torch.no_grad():
            clean = forward(images).argmax(1) == labels
        adv = attack(images, labels)
        with torch.no_grad():
            robust = forward(adv).argmax(1) == labels
        return int(clean.sum()) + int(robust.sum())

    step = train_step if args.mode == "train" else eval_step
    size = args.image_size
    times = []
    for i in range(args.warmup + args.steps):
        images = torch.rand(args.batch_size, 3, size, size, generator=gen).to(device)
        labels = torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(images, labels)
        if args.device == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    times_ms = np.array(times) * 1000
    median = float(np.median(times_ms))
    print(json.dumps({
        "framework": f"torch_{args.variant}", "images_per_sec": args.batch_size / (median / 1000),
        "images_per_sec_best": args.batch_size / (float(np.min(times_ms)) / 1000),
        "step_ms_median": median, "step_ms_p90": float(np.percentile(times_ms, 90)),
        "config": vars(args), "torch_version": torch.__version__,
        "machine": platform.machine(), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
