"""PyTorch-exact SGD and epoch-wise learning-rate schedules for tf_keras.

The reference trains with `torch.optim.SGD(params, lr, momentum=0.9, weight_decay=wd)`
and an epoch-stepped `MultiStepLR` / `CosineAnnealingLR` (optionally after a linear
warm-up). Keras's SGD differs in two ways that matter: its momentum buffer accumulates
lr-scaled gradients (so a learning-rate drop takes effect a few steps late), and it
has no coupled weight decay. `TorchSGD` implements torch's update,
b <- momentum * b + (g + wd * w); w <- w - lr * b, applied to every trainable variable
(BatchNorm and biases included, as torch does), after the cross-replica gradient sum.
"""
import math

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tf_keras

SCHEDULES = ("multistep", "cosine", "constant")


@tf_keras.utils.register_keras_serializable(package="dwlt_tf")
class EpochSchedule(tf_keras.optimizers.schedules.LearningRateSchedule):
    """torch's epoch-stepped LR schedules, evaluated from the global step.

    * multistep: lr * gamma ** (number of milestones <= epoch)  (MultiStepLR)
    * cosine: lr * (1 + cos(pi * epoch / epochs)) / 2           (CosineAnnealingLR)
    * constant: lr
    During `warmup_epochs`, lr * (step + 1) / (warmup_epochs * steps_per_epoch), as the
    reference's `warmup_lr`.
    """

    def __init__(self, lr, steps_per_epoch, kind="multistep", milestones=(), gamma=0.1,
                 epochs=1, warmup_epochs=0):
        if kind not in SCHEDULES:
            raise ValueError(f"Unknown schedule {kind!r}; choose one of {SCHEDULES}")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch!r}")
        self.lr = float(lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.kind = kind
        self.milestones = tuple(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.epochs = int(epochs)
        self.warmup_epochs = int(warmup_epochs)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        epoch = tf.floor(step / self.steps_per_epoch)
        if self.kind == "multistep":
            passed = tf.add_n([tf.cast(epoch >= m, tf.float32) for m in self.milestones]
                              ) if self.milestones else tf.constant(0.0)
            lr = self.lr * tf.pow(self.gamma, passed)
        elif self.kind == "cosine":
            lr = self.lr * (1.0 + tf.cos(math.pi * epoch / max(self.epochs, 1))) / 2.0
        else:
            lr = tf.constant(self.lr)
        if self.warmup_epochs:
            warm = self.lr * (step + 1.0) / (self.warmup_epochs * self.steps_per_epoch)
            lr = tf.where(epoch < self.warmup_epochs, tf.minimum(warm, self.lr), lr)
        return lr

    def at_epoch(self, epoch):
        """The LR of the first step of `epoch` (for logs and tests)."""
        return float(self(epoch * self.steps_per_epoch))

    def get_config(self):
        return {"lr": self.lr, "steps_per_epoch": self.steps_per_epoch, "kind": self.kind,
                "milestones": list(self.milestones), "gamma": self.gamma,
                "epochs": self.epochs, "warmup_epochs": self.warmup_epochs}


@tf_keras.utils.register_keras_serializable(package="dwlt_tf")
class TorchSGD(tf_keras.optimizers.SGD):
    """SGD with torch's momentum formulation and coupled weight decay."""

    def __init__(self, learning_rate=0.1, momentum=0.9, torch_weight_decay=0.0,
                 name="TorchSGD", **kwargs):
        if momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {momentum!r}")
        if torch_weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {torch_weight_decay!r}")
        super().__init__(learning_rate=learning_rate, momentum=momentum, name=name, **kwargs)
        self.torch_weight_decay = float(torch_weight_decay)

    def update_step(self, gradient, variable):
        lr = tf.cast(self.learning_rate, variable.dtype)
        gradient = tf.convert_to_tensor(gradient)
        if self.torch_weight_decay:
            gradient = gradient + tf.cast(self.torch_weight_decay, variable.dtype) * variable
        if self.momentum:
            buf = self.momentums[self._index_dict[self._var_key(variable)]]
            buf.assign(tf.cast(self.momentum, variable.dtype) * buf + gradient)
            gradient = buf
        variable.assign_sub(lr * gradient)

    def get_config(self):
        config = super().get_config()
        config["torch_weight_decay"] = self.torch_weight_decay
        return config
