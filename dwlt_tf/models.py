"""ResNets in tf_keras whose parameters map 1:1 onto torchvision's.

Layer names are torchvision's state_dict prefixes (`conv1`, `layer2.0.downsample.0`,
`fc`, ...), so `convert.py` and the pruning masks address the same tensors in both
frameworks. Architecture details that decide numerical parity with torchvision v1.5:

* stride on the bottleneck's 3x3 conv; no conv biases;
* BatchNorm eps 1e-5 and Keras momentum 0.9 (= torch momentum 0.1), moving variance
  updated with the unbiased batch variance as torch does;
* torch's symmetric zero padding (explicit `ZeroPadding2D` + `valid` conv where TF's
  `same` would pad asymmetrically: every strided conv and the max-pool);
* a `Normalization` layer at the input, so models take NHWC float32 images in [0, 1]
  and adversarial budgets are in pixel units.

Stems: `imagenet` (7x7/2 conv, 3x3/2 max-pool) and `cifar` (3x3/1 conv, no max-pool:
the reference's 32-pixel mode). `base_width` shrinks every layer for CPU-scale runs;
64 is torchvision's.
"""
import math

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tf_keras

from dwlt_tf import checks, data

layers = tf_keras.layers

# name -> (block type, blocks per stage)
ARCHS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
STEMS = ("imagenet", "cifar")
_EXPANSION = {"basic": 1, "bottleneck": 4}


@tf_keras.utils.register_keras_serializable(package="dwlt_tf")
class Normalization(layers.Layer):
    """(x - mean) / std per channel, with mean/std stored as (non-trainable) weights.

    Stored as weights rather than constants so converted checkpoints that carry their
    own normalizer, transfer to a new dataset and SavedModel export all see the values
    actually used. Always computes in float32 (the first conv casts afterwards).
    """

    def __init__(self, mean, std, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self._init_mean = [float(m) for m in mean]
        self._init_std = [float(s) for s in std]
        if len(self._init_mean) != 3 or len(self._init_std) != 3:
            raise ValueError(f"mean and std need 3 channels, got mean={mean} std={std}")
        if min(self._init_std) <= 0:
            raise ValueError(f"std must be positive, got {std}")

    def build(self, input_shape):
        self.mean = self.add_weight(
            "mean", shape=(3,), trainable=False,
            initializer=tf_keras.initializers.Constant(self._init_mean))
        self.std = self.add_weight(
            "std", shape=(3,), trainable=False,
            initializer=tf_keras.initializers.Constant(self._init_std))
        super().build(input_shape)

    def call(self, inputs):
        return (tf.cast(inputs, tf.float32) - self.mean) / self.std

    def get_config(self):
        config = super().get_config()
        config.update(mean=[float(v) for v in self.mean.numpy()] if self.built else self._init_mean,
                      std=[float(v) for v in self.std.numpy()] if self.built else self._init_std)
        return config


@tf_keras.utils.register_keras_serializable(package="dwlt_tf")
class BatchNorm(layers.BatchNormalization):
    """BatchNormalization with PyTorch's defaults and running-variance update.

    TF's fused kernel (the unsynchronized default) already updates the moving variance
    with the unbiased (Bessel-corrected) batch variance as torch does. The synchronized
    (cross-replica) path is replaced here by numerically stable moments that also feed
    the unbiased variance to the moving average.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("epsilon", 1e-5)
        kwargs.setdefault("momentum", 0.9)
        super().__init__(**kwargs)
        self._bessel = None

    def _calculate_mean_and_var(self, inputs, reduction_axes, keep_dims, mask=None):
        if not self.synchronized or mask is not None:
            return super()._calculate_mean_and_var(inputs, reduction_axes, keep_dims, mask=mask)
        # Two-pass cross-replica moments. Keras's synchronized path uses E[x^2] - E[x]^2,
        # whose cancellation in float32 made gradients ~1e-3 (relative) off torch's and
        # the fused kernel's; the mean is all-reduced first, then the squared deviations.
        replica_ctx = tf.distribute.get_replica_context()

        def all_sum(value):
            if replica_ctx is None:
                return value
            return replica_ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)

        # Half-precision inputs are reduced in float32; float32/float64 as they are.
        dtype = tf.float32 if inputs.dtype in (tf.float16, tf.bfloat16) else inputs.dtype
        x = tf.cast(inputs, dtype)
        # The element count travels in the same all-reduce as the sums: a collective
        # that depends on no data could be launched in a different order on different
        # replicas and pair up with another layer's collective.
        local_count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), reduction_axes)), dtype)
        local_sum = tf.reduce_sum(x, reduction_axes, keepdims=True)
        packed = all_sum(tf.concat([tf.reshape(local_sum, [-1]), [local_count]], 0))
        count = packed[-1]
        mean = tf.reshape(packed[:-1], tf.shape(local_sum)) / count
        variance = all_sum(tf.reduce_sum(tf.square(x - mean), reduction_axes,
                                         keepdims=True)) / count
        self._bessel = count / tf.maximum(count - 1.0, 1.0)
        if not keep_dims:
            mean = tf.squeeze(mean, reduction_axes)
            variance = tf.squeeze(variance, reduction_axes)
        return tf.cast(mean, inputs.dtype), tf.cast(variance, inputs.dtype)

    def _assign_moving_average(self, variable, value, momentum, inputs_size):
        if self.synchronized and variable is self.moving_variance and self._bessel is not None:
            value = tf.cast(value, variable.dtype) * tf.cast(self._bessel, variable.dtype)
        return super()._assign_moving_average(variable, value, momentum, inputs_size)


@tf_keras.utils.register_keras_serializable(package="dwlt_tf")
class DownsampleConv2D(layers.Conv2D):
    """The 1x1 strided shortcut conv, computed as subsample-then-1x1-conv.

    Mathematically identical to a strided 1x1 convolution. It exists because TF 2.21's
    oneDNN kernels corrupt memory (double free / malloc assertion, then abort) in the
    gradient of a 1x1 stride-2 convolution with few (<= 8) input channels and an odd
    batch size -- e.g. a base_width=8 CPU-scale ResNet on the short last batch of an
    epoch. A slice followed by a stride-1 convolution avoids that kernel.
    """

    def convolution_op(self, inputs, kernel):
        if self.kernel_size == (1, 1) and self.strides != (1, 1) and self.padding == "valid":
            rows, cols = self.strides
            return tf.nn.convolution(inputs[:, ::rows, ::cols, :], kernel, strides=1,
                                     padding="VALID")
        return super().convolution_op(inputs, kernel)

    def get_prunable_weights(self):
        # TF-MOT's registry knows built-in layers by exact class only.
        return [self.kernel]


def _conv(filters, kernel, stride, name, cls=layers.Conv2D):
    # torchvision initializes convs with kaiming_normal_(mode="fan_out", relu).
    return cls(
        filters, kernel, strides=stride, padding="valid" if stride > 1 or kernel == 7 else "same",
        use_bias=False, name=name,
        kernel_initializer=tf_keras.initializers.VarianceScaling(
            2.0, mode="fan_out", distribution="untruncated_normal"))


def _padded_conv(x, filters, kernel, stride, name):
    """Conv with torch's symmetric padding (kernel // 2 on every side)."""
    if stride > 1 or kernel == 7:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
    return _conv(filters, kernel, stride, name)(x)


def _bn(name, synchronized):
    return BatchNorm(name=name, synchronized=synchronized)


def _basic_block(x, planes, stride, prefix, downsample, sync_bn):
    identity = x
    out = _padded_conv(x, planes, 3, stride, f"{prefix}.conv1")
    out = _bn(f"{prefix}.bn1", sync_bn)(out)
    out = layers.ReLU(name=f"{prefix}.relu1")(out)
    out = _padded_conv(out, planes, 3, 1, f"{prefix}.conv2")
    out = _bn(f"{prefix}.bn2", sync_bn)(out)
    if downsample:
        identity = _conv(planes, 1, stride, f"{prefix}.downsample.0", DownsampleConv2D)(x)
        identity = _bn(f"{prefix}.downsample.1", sync_bn)(identity)
    out = layers.Add(name=f"{prefix}.add")([out, identity])
    return layers.ReLU(name=f"{prefix}.relu")(out)


def _bottleneck_block(x, planes, stride, prefix, downsample, sync_bn):
    identity = x
    out = _conv(planes, 1, 1, f"{prefix}.conv1")(x)
    out = _bn(f"{prefix}.bn1", sync_bn)(out)
    out = layers.ReLU(name=f"{prefix}.relu1")(out)
    out = _padded_conv(out, planes, 3, stride, f"{prefix}.conv2")
    out = _bn(f"{prefix}.bn2", sync_bn)(out)
    out = layers.ReLU(name=f"{prefix}.relu2")(out)
    out = _conv(planes * 4, 1, 1, f"{prefix}.conv3")(out)
    out = _bn(f"{prefix}.bn3", sync_bn)(out)
    if downsample:
        identity = _conv(planes * 4, 1, stride, f"{prefix}.downsample.0", DownsampleConv2D)(x)
        identity = _bn(f"{prefix}.downsample.1", sync_bn)(identity)
    out = layers.Add(name=f"{prefix}.add")([out, identity])
    return layers.ReLU(name=f"{prefix}.relu")(out)


def build_resnet(arch="resnet50", num_classes=1000, stem="imagenet", mean=None, std=None,
                 base_width=64, sync_batchnorm=False, name=None):
    """Builds a torchvision-layout ResNet taking NHWC float32 images in [0, 1].

    Args:
      arch: one of `ARCHS`.
      num_classes: size of the `fc` classifier.
      stem: `imagenet` (7x7/2 conv + 3x3/2 max-pool) or `cifar` (3x3/1 conv, no pool).
      mean, std: per-channel normalization applied inside the model; ImageNet's
        constants (`data.IMAGENET_MEAN/STD`) when None.
      base_width: width of the first stage; 64 is torchvision's, smaller values give
        CPU-scale models with the same topology.
      sync_batchnorm: synchronize BatchNorm statistics across replicas (the reference
        trains with per-GPU statistics, the default).
      name: model name; defaults to `arch`.

    Returns:
      A `tf_keras.Model` with input shape (None, None, 3) returning float32 logits.
    """
    if arch not in ARCHS:
        raise ValueError(f"Unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    if stem not in STEMS:
        raise ValueError(f"Unknown stem {stem!r}; choose one of {list(STEMS)}")
    checks.positive_int("num_classes", num_classes)
    checks.positive_int("base_width", base_width)
    block_type, blocks = ARCHS[arch]
    block_fn = _basic_block if block_type == "basic" else _bottleneck_block
    expansion = _EXPANSION[block_type]
    mean = data.IMAGENET_MEAN if mean is None else mean
    std = data.IMAGENET_STD if std is None else std

    images = layers.Input(shape=(None, None, 3), dtype="float32", name="images")
    x = Normalization(mean, std, name="normalize")(images)
    if stem == "imagenet":
        x = _padded_conv(x, base_width, 7, 2, "conv1")
    else:
        x = _conv(base_width, 3, 1, "conv1")(x)
    x = _bn("bn1", sync_batchnorm)(x)
    x = layers.ReLU(name="relu")(x)
    if stem == "imagenet":
        # Zero padding equals torch's -inf padding here: the inputs are post-ReLU (>= 0).
        x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)
        x = layers.MaxPool2D(3, strides=2, name="maxpool")(x)

    in_planes = base_width
    for stage, num_blocks in enumerate(blocks):
        planes = base_width * 2 ** stage
        for index in range(num_blocks):
            stride = 2 if stage > 0 and index == 0 else 1
            downsample = index == 0 and (stride != 1 or in_planes != planes * expansion)
            x = block_fn(x, planes, stride, f"layer{stage + 1}.{index}", downsample,
                         sync_batchnorm)
            in_planes = planes * expansion

    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    # torch.nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both.
    bound = 1.0 / math.sqrt(in_planes)
    x = layers.Dense(
        num_classes, name="fc",
        kernel_initializer=tf_keras.initializers.RandomUniform(-bound, bound),
        bias_initializer=tf_keras.initializers.RandomUniform(-bound, bound))(x)
    # Logits leave the model in float32 even under a mixed-precision policy.
    logits = layers.Activation("linear", dtype="float32", name="logits")(x)
    return tf_keras.Model(images, logits, name=name or arch)


def conv_layer_names(model):
    """Names of the model's Conv2D layers in topological order (the prunable set)."""
    return [layer.name for layer in _iter_layers(model)
            if isinstance(layer, layers.Conv2D)]


def _iter_layers(model):
    for layer in model.layers:
        inner = getattr(layer, "layer", None)  # unwrap pruning wrappers
        yield inner if isinstance(inner, layers.Layer) else layer


def copy_weights(source, target, skip=()):
    """Copies each weight of `source` into the same-named layer of `target`.

    Layers named in `skip` keep their own (fresh) weights: transfer skips `fc` so the
    downstream task gets a new classifier, as the reference does.
    """
    for layer in target.layers:
        if layer.name in skip or not layer.weights:
            continue
        try:
            source_layer = source.get_layer(layer.name)
        except ValueError:
            raise ValueError(
                f"Layer {layer.name!r} of {target.name!r} has no counterpart in "
                f"{source.name!r}: the architectures differ") from None
        layer.set_weights(source_layer.get_weights())
