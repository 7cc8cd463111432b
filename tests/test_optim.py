"""TorchSGD and EpochSchedule follow torch.optim exactly."""
import numpy as np
import pytest
import tensorflow as tf
import torch

from dwlt_tf import optim


@pytest.mark.parametrize("kind,milestones,warmup", [("multistep", (2, 3), 0),
                                                    ("cosine", (), 0), ("multistep", (3,), 1)])
def test_sgd_and_schedule_match_torch(kind, milestones, warmup):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    steps_per_epoch, epochs, lr, wd = 3, 5, 0.1, 5e-4
    grads = rng.normal(size=(epochs * steps_per_epoch, 5, 3)).astype(np.float32)

    # torch: grads injected directly, scheduler stepped per epoch, warm-up as the reference.
    tw = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.SGD([tw], lr=lr, momentum=0.9, weight_decay=wd)
    sched = (torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), 0.1)
             if kind == "multistep" else torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs))
    for epoch in range(epochs):
        for step in range(steps_per_epoch):
            if epoch < warmup:
                current = epoch * steps_per_epoch + step + 1
                for group in opt.param_groups:
                    group["lr"] = min(lr * current / (warmup * steps_per_epoch), lr)
            tw.grad = torch.tensor(grads[epoch * steps_per_epoch + step])
            opt.step()
        sched.step()

    schedule = optim.EpochSchedule(lr, steps_per_epoch, kind, milestones, 0.1, epochs, warmup)
    kw = tf.Variable(w0)
    kopt = optim.TorchSGD(schedule, momentum=0.9, torch_weight_decay=wd)
    for g in grads:
        kopt.apply_gradients([(tf.constant(g), kw)])
    np.testing.assert_allclose(kw.numpy(), tw.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_schedule_values():
    s = optim.EpochSchedule(0.1, 10, "multistep", (50, 75), 0.1, 100)
    assert s.at_epoch(0) == pytest.approx(0.1)
    assert s.at_epoch(50) == pytest.approx(0.01)
    assert s.at_epoch(99) == pytest.approx(0.001)
    c = optim.EpochSchedule(0.01, 10, "cosine", epochs=80)
    assert c.at_epoch(40) == pytest.approx(0.005)
    with pytest.raises(ValueError, match="Unknown schedule 'step'"):
        optim.EpochSchedule(0.1, 10, "step")
    with pytest.raises(ValueError, match="lr must be positive, got 0"):
        optim.EpochSchedule(0, 10)
