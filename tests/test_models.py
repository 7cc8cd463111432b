"""Tests for dwlt_tf.models: torchvision-identical ResNets."""
import numpy as np
import pytest
import tf_keras

from dwlt_tf import data, models


def _trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("arch,expected", [("resnet50", 25_557_032), ("resnet18", 11_689_512)])
def test_parameter_count_equals_torchvision(arch, expected):
    # torchvision counts parameters (not BN running statistics), i.e. our trainables.
    assert _trainable_count(models.build_resnet(arch, num_classes=1000)) == expected


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_one_model_serves_32_64_224_pixels(arch, stem):
    model = models.build_resnet(arch, num_classes=7, stem=stem)
    assert model.input_shape == (None, None, None, 3)
    for size in (32, 64, 224):
        logits = model(np.random.rand(2, size, size, 3).astype("float32"), training=False)
        assert logits.shape == (2, 7)
        assert logits.dtype == "float32"
        assert np.all(np.isfinite(logits.numpy()))


def test_layer_names_are_torchvision_prefixes():
    model = models.build_resnet("resnet50")
    names = set(models.conv_layer_names(model))
    assert {"conv1", "layer1.0.conv1", "layer1.0.downsample.0", "layer4.2.conv3"} <= names
    assert len(names) == 53  # ResNet-50's Conv2d modules, conv1 and downsamples included
    assert model.get_layer("layer2.0.conv2").strides == (2, 2)  # v1.5: stride on the 3x3
    assert model.get_layer("layer2.0.conv1").strides == (1, 1)
    assert not any(layer.use_bias for layer in model.layers
                   if isinstance(layer, tf_keras.layers.Conv2D))


def test_batchnorm_uses_torch_conventions():
    bn = models.build_resnet("resnet18").get_layer("layer1.0.bn1")
    assert bn.epsilon == pytest.approx(1e-5)
    assert bn.momentum == pytest.approx(0.9)  # torch momentum 0.1


def test_normalization_inside_the_model():
    model = models.build_resnet("resnet18", num_classes=3, stem="cifar",
                                mean=data.STATS["cifar10"][0], std=data.STATS["cifar10"][1])
    norm = model.get_layer("normalize")
    np.testing.assert_allclose(norm.mean.numpy(), data.STATS["cifar10"][0])
    x = np.full((1, 2, 2, 3), 0.5, "float32")
    np.testing.assert_allclose(norm(x).numpy()[0, 0, 0],
                               (0.5 - np.array(data.STATS["cifar10"][0]))
                               / np.array(data.STATS["cifar10"][1]), rtol=1e-6)


def test_base_width_shrinks_every_layer():
    small = models.build_resnet("resnet18", num_classes=10, stem="cifar", base_width=8)
    assert small.get_layer("conv1").filters == 8
    assert small.get_layer("layer4.1.conv2").filters == 64
    assert small.get_layer("fc").kernel.shape == (64, 10)


def test_copy_weights_keeps_everything_but_the_skipped_head():
    source = models.build_resnet("resnet18", num_classes=10, stem="cifar", base_width=8)
    target = models.build_resnet("resnet18", num_classes=5, stem="cifar", base_width=8)
    models.copy_weights(source, target, skip=("fc",))
    np.testing.assert_array_equal(source.get_layer("layer3.0.conv1").kernel.numpy(),
                                  target.get_layer("layer3.0.conv1").kernel.numpy())
    assert target.get_layer("fc").kernel.shape == (64, 5)
    other = models.build_resnet("resnet50", num_classes=5)
    with pytest.raises(ValueError, match="no counterpart|shape|Layer"):
        models.copy_weights(source, other, skip=("fc",))


@pytest.mark.parametrize("kwargs,match", [
    (dict(arch="resnet9"), "Unknown arch 'resnet9'"),
    (dict(stem="tiny"), "Unknown stem 'tiny'"),
    (dict(num_classes=0), "num_classes=0: must be a positive int"),
    (dict(base_width=-4), "base_width=-4: must be a positive int"),
    (dict(std=(1.0, 0.0, 1.0)), "std must be positive"),
])
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.build_resnet(**kwargs)


@pytest.mark.parametrize("synchronized", [False, True])
def test_batchnorm_training_step_matches_torch(synchronized):
    import tensorflow as tf
    import torch
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(6, 5, 5, 4)) * 3 + 2).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    bn = models.BatchNorm(synchronized=synchronized)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = bn(xt, training=True)
        loss = tf.reduce_sum(y * upstream)
    dx = tape.gradient(loss, xt).numpy()
    ref = torch.nn.BatchNorm2d(4).double().train()
    xr = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float64, requires_grad=True)
    yr = ref(xr)
    (yr * torch.tensor(upstream.transpose(0, 3, 1, 2), dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(y.numpy(), yr.detach().numpy().transpose(0, 2, 3, 1),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, xr.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)
    # torch updates the running variance with the unbiased batch variance.
    np.testing.assert_allclose(bn.moving_variance.numpy(), ref.running_var.numpy(), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_mean.numpy(), ref.running_mean.numpy(), rtol=1e-5)
