"""TF-MOT pruning wrappers driven by global (IMP) masks instead of TF-MOT's own schedule.

`wrap(model)` wraps every prunable layer in `GlobalMaskWrapper`, a subclass of TF-MOT's
`PruneLowMagnitude`, with a `GlobalMaskSchedule` that never prunes on its own: TF-MOT's
update is per-layer top-k, while the paper's masks are global, so masks are computed by
`dwlt_tf.pruning` at round boundaries and written into the wrappers' `mask` variables
(`set_masks`).

Why a subclass: `PruneLowMagnitude.call` with training=True increments `pruning_step`,
runs the schedule's conditional mask update (a `merge_call` under tf.distribute) and
assigns weight <- weight * mask. Inside CleverHans's nested `tf.function` under
`strategy.run` the merge_call fails ("merge_call called while defining a new graph or a
tf.function"), and each PGD iteration would advance the step. `GlobalMaskWrapper.call`
instead multiplies the kernel by its mask functionally -- no variable is touched in the
forward pass, so attacks, evaluation and distributed training see the masked network
and leave all state alone -- and the training loop calls `apply_masks` after every
optimizer update so the stored kernels stay exactly zero where pruned (which also makes
`strip_pruning` give sparse kernels).

Within `kernel_snapshot(model)` every wrapper uses a masked (and, under mixed precision,
cast) kernel computed once on entry instead of re-multiplying at each call: an attack's
iterations run on weights that do not change, so PGD-k pays for the mask and the cast
once per training step instead of k + 1 times, with bit-identical results (the same ops
on the same values, only not repeated).

Wrapped models save and reload (`tf_keras.models.load_model`, checkpoints) without the
user passing custom objects: the classes are registered with Keras on import.
"""
import contextlib
import threading

import numpy as np

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras
from tensorflow_model_optimization.python.core.sparsity.keras import (
    pruning_wrapper as tfmot_pruning_wrapper)

from dwlt_tf import tickets

_PruningSchedule = tfmot.sparsity.keras.PruningSchedule
_PruneLowMagnitude = tfmot_pruning_wrapper.PruneLowMagnitude

PRUNABLE_TYPES = {"conv": tf_keras.layers.Conv2D, "dense": tf_keras.layers.Dense}


@tf_keras.utils.register_keras_serializable(package="dwlt_tf")
class GlobalMaskSchedule(_PruningSchedule):
    """A schedule that never prunes: masks come from global IMP at round boundaries.

    Carries the ticket's round and sparsity as documentation of the mask it holds.
    """

    def __init__(self, imp_round=0, sparsity=0.0):
        self.imp_round = int(imp_round)
        self.sparsity = float(sparsity)

    def __call__(self, step):
        return tf.constant(False), tf.constant(self.sparsity, tf.float32)

    def get_config(self):
        return {"class_name": self.__class__.__name__,
                "config": {"imp_round": self.imp_round, "sparsity": self.sparsity}}


@tf_keras.utils.register_keras_serializable(package="dwlt_tf")
class GlobalMaskWrapper(_PruneLowMagnitude):
    """PruneLowMagnitude whose forward pass applies the mask without touching state."""

    def __init__(self, layer, pruning_schedule=None, **kwargs):
        if not isinstance(layer, tuple(PRUNABLE_TYPES.values())):
            raise ValueError(f"GlobalMaskWrapper supports Conv2D and Dense layers, got "
                             f"{type(layer).__name__} {getattr(layer, 'name', '')!r}")
        super().__init__(layer, pruning_schedule=pruning_schedule or GlobalMaskSchedule(),
                         **kwargs)

    @property
    def mask(self):
        return self.pruning_vars[0][1]

    @property
    def kernel(self):
        return self.layer.kernel

    def masked_kernel(self, dtype=None):
        """kernel * mask in `dtype` (default: the wrapper's compute dtype), as `call` uses it."""
        kernel = tf.cast(self.layer.kernel, dtype or self.compute_dtype)
        return kernel * tf.cast(self.mask, kernel.dtype)

    def call(self, inputs, training=None, **kwargs):
        layer = self.layer
        kernel = _snapshot_kernels().get(id(self))
        if kernel is None:
            kernel = layer.kernel * tf.cast(self.mask, layer.kernel.dtype)
        if isinstance(layer, tf_keras.layers.Conv2D):
            outputs = layer.convolution_op(inputs, kernel)
            if layer.use_bias:
                outputs = tf.nn.bias_add(outputs, layer.bias)
        else:
            outputs = tf.matmul(inputs, kernel)
            if layer.use_bias:
                outputs = tf.nn.bias_add(outputs, layer.bias)
        if layer.activation is not None:
            outputs = layer.activation(outputs)
        return outputs

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        schedule = config.pop("pruning_schedule")
        config["pruning_schedule"] = GlobalMaskSchedule.from_config(schedule["config"])
        # Keras's Wrapper stores the inner layer under its bare class name, while our
        # layers (e.g. models.DownsampleConv2D) are registered as "dwlt_tf>Name".
        ours = {name.split(">", 1)[1]: obj for name, obj in
                tf_keras.utils.get_custom_objects().items() if name.startswith("dwlt_tf>")}
        config["layer"] = tf_keras.layers.deserialize(config.pop("layer"), custom_objects=ours)
        return cls(**config)


# Per thread: MirroredStrategy runs each replica's function in its own thread, and each
# replica must see the kernels it read from its own copy of the variables.
_SNAPSHOT = threading.local()


def _snapshot_kernels():
    return getattr(_SNAPSHOT, "kernels", None) or {}


@contextlib.contextmanager
def kernel_snapshot(model):
    """Within the block, `model`'s wrappers compute with masked kernels read on entry.

    For code that runs the model many times on unchanged weights (attack iterations).
    The weights must not change inside the block; models without wrappers (or objects
    that are not Keras models) are run as they are.
    """
    layers = wrappers(model) if isinstance(model, tf_keras.Model) else {}
    previous = _snapshot_kernels()
    _SNAPSHOT.kernels = {**previous,
                         **{id(w): tf.stop_gradient(w.masked_kernel()) for w in layers.values()}}
    try:
        yield
    finally:
        _SNAPSHOT.kernels = previous


def wrap(model, prunable=("conv",), schedule=None):
    """Returns `model` with its prunable layers in `GlobalMaskWrapper`s (weights shared).

    Args:
      model: a functional tf_keras model (e.g. from `models.build_resnet`).
      prunable: layer kinds to prune: "conv" (every Conv2D, as the reference) and/or
        "dense" (the classifier, kept dense by default).
      schedule: the `GlobalMaskSchedule` for every wrapper.
    """
    unknown = set(prunable) - set(PRUNABLE_TYPES)
    if unknown or not prunable:
        raise ValueError(f"prunable must name some of {sorted(PRUNABLE_TYPES)}, got {prunable!r}")
    types = tuple(PRUNABLE_TYPES[p] for p in prunable)
    if any(isinstance(layer, _PruneLowMagnitude) for layer in model.layers):
        raise ValueError(f"Model {model.name!r} is already wrapped for pruning")

    def clone(layer):
        if isinstance(layer, types):
            return GlobalMaskWrapper(layer, pruning_schedule=schedule or GlobalMaskSchedule())
        return layer

    # Like tfmot.sparsity.keras.prune_low_magnitude: clone_model reuses the layer
    # objects, so the wrapped model shares every weight with `model`.
    return tf_keras.models.clone_model(model, clone_function=clone)


def wrappers(model):
    """name -> GlobalMaskWrapper, keyed by the wrapped layer's (torchvision) name."""
    return {layer.layer.name: layer for layer in model.layers
            if isinstance(layer, GlobalMaskWrapper)}


def get_kernels(model):
    return {name: w.kernel.numpy() for name, w in wrappers(model).items()}


def get_masks(model):
    return {name: w.mask.numpy() != 0 for name, w in wrappers(model).items()}


def set_masks(model, masks, schedule_sparsity=True):
    """Writes `masks` into the wrappers and zeroes the pruned kernel entries.

    Every wrapper must get a mask of its kernel's shape; names are the layers'
    torchvision names (the keys of `wrappers(model)`, `tickets.load` and
    `convert.convert(...).masks`).
    """
    layers = wrappers(model)
    missing, extra = sorted(set(layers) - set(masks)), sorted(set(masks) - set(layers))
    if missing or extra:
        raise ValueError(f"Masks do not fit model {model.name!r}: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    for name, wrapper in layers.items():
        mask = np.asarray(masks[name])
        if mask.shape != tuple(wrapper.mask.shape):
            raise ValueError(f"Mask {name!r} has shape {mask.shape}, kernel has "
                             f"{tuple(wrapper.mask.shape)}")
        wrapper.mask.assign(mask.astype(wrapper.mask.dtype.as_numpy_dtype))
    if schedule_sparsity:
        value = tickets.sparsity(masks)
        for wrapper in layers.values():
            wrapper.pruning_schedule.sparsity = value
    apply_masks(model)


def apply_masks(model):
    """kernel <- kernel * mask for every wrapper (graph-friendly; cross-replica context)."""
    for wrapper in wrappers(model).values():
        kernel = wrapper.kernel
        kernel.assign(kernel * tf.cast(wrapper.mask, kernel.dtype))


def model_sparsity(model):
    """Zeros among the prunable kernels, counted from the kernels themselves."""
    kernels = get_kernels(model)
    return tickets.sparsity({n: k != 0 for n, k in kernels.items()})


def strip(model):
    """A plain Keras model with the same (sparse) kernels: TF-MOT's strip_pruning."""
    apply_masks(model)
    return tfmot.sparsity.keras.strip_pruning(model)
