"""BatchNorm folded into the convolutions, for everything that runs in inference mode.

In inference mode BatchNorm is a per-channel affine map, so a convolution followed by
BatchNorm equals one convolution with scaled kernel and a bias:

    BN(conv(x, W)) = conv(x, W * s) + (beta - mean * s),   s = gamma / sqrt(var + eps)

`FoldedModel` is a copy of a ResNet (plain or wrapped for pruning) built that way: each
conv->BN pair becomes one biased convolution, pruning masks are multiplied into the
kernels once, and every other layer is copied. Evaluation -- SA and the PGD-20 RA of
validation and test -- and the robustness audit run on it: a forward pass without
BatchNorm and an input gradient without BatchNorm's backward pass, on kernels that are
not re-masked at every attack iteration. Logits equal the source model's up to float
rounding (tests/test_folding.py: within 1e-4 relative, identical verdicts on the bundled
test images). `refresh()` re-reads the source's weights (evaluation calls it every time,
as the weights change between epochs).
"""
import numpy as np

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tf_keras

from dwlt_tf import pruning_wrapper

_BATCHNORMS = (tf_keras.layers.BatchNormalization,)


def _conv_of(layer):
    """The Conv2D behind `layer` (itself, or the one a pruning wrapper holds), else None."""
    inner = layer.layer if isinstance(layer, pruning_wrapper.GlobalMaskWrapper) else layer
    return inner if isinstance(inner, tf_keras.layers.Conv2D) else None


def conv_batchnorm_pairs(model):
    """{conv layer name: BatchNorm layer name} for every BN fed only by a conv (or a
    pruning wrapper's conv: then the wrapper's name) that feeds only it -- the pairs
    that fold."""
    # This model's own graph, from its (public) functional config: layers shared with
    # another model (a wrapped model shares its BatchNorms with the unwrapped one) have
    # calls in both, and only this model's count.
    inputs, consumers = {}, {}
    for entry in model.get_config()["layers"]:
        for node in entry["inbound_nodes"]:
            sources = [inbound[0] for inbound in node]
            inputs.setdefault(entry["name"], []).extend(sources)
            for source in sources:
                consumers.setdefault(source, []).append(entry["name"])
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, _BATCHNORMS) or len(inputs.get(layer.name, [])) != 1:
            continue
        source = inputs[layer.name][0]
        if _conv_of(model.get_layer(source)) is not None and len(consumers.get(source, [])) == 1:
            pairs[source] = layer.name
    return pairs


class FoldedModel:
    """An inference-only copy of `model` with BatchNorm folded into its convolutions.

    Call it like the model (`folded(x, training=False)`); `training=True` is refused,
    since batch statistics cannot be folded. Build it inside the strategy scope the
    model lives in (its variables are mirrored like the model's).
    """

    def __init__(self, model):
        self.source = model
        self.pairs = conv_batchnorm_pairs(model)
        if not self.pairs:
            raise ValueError(f"Model {model.name!r} has no conv -> BatchNorm pair to fold")
        folded_bns = set(self.pairs.values())
        self._source_name = {}  # folded layer name -> source layer name

        def clone(layer):
            if layer.name in self.pairs:  # named as the conv (unwrapped): torchvision's name
                conv = _conv_of(layer)
                new = conv.__class__.from_config(dict(conv.get_config(), use_bias=True))
            elif layer.name in folded_bns:
                new = tf_keras.layers.Activation("linear", name=layer.name,
                                                 dtype=layer.dtype_policy)
            else:
                new = layer.__class__.from_config(layer.get_config())
            self._source_name[new.name] = layer.name
            return new

        self.model = tf_keras.models.clone_model(model, clone_function=clone)
        self.refresh()

    def refresh(self):
        """Re-computes the folded weights from the source model's current weights."""
        source = {layer.name: layer for layer in self.source.layers}
        for layer in self.model.layers:
            if not layer.weights:
                continue
            original = source[self._source_name[layer.name]]
            if original.name not in self.pairs:
                layer.set_weights(original.get_weights())
                continue
            conv = _conv_of(original)
            kernel = conv.kernel.numpy().astype(np.float64)
            if isinstance(original, pruning_wrapper.GlobalMaskWrapper):
                kernel = kernel * original.mask.numpy()
            bias = conv.bias.numpy().astype(np.float64) if conv.use_bias else 0.0
            bn = source[self.pairs[original.name]]
            gamma = bn.gamma.numpy() if bn.scale else 1.0
            beta = bn.beta.numpy() if bn.center else 0.0
            scale = gamma / np.sqrt(bn.moving_variance.numpy().astype(np.float64) + bn.epsilon)
            layer.set_weights([(kernel * scale).astype(conv.kernel.dtype.as_numpy_dtype),
                               ((bias - bn.moving_mean.numpy()) * scale + beta).astype(
                                   conv.kernel.dtype.as_numpy_dtype)])

    def __call__(self, images, training=False):
        if training:
            raise ValueError("A FoldedModel computes inference mode only (training=False)")
        return self.model(images, training=False)
