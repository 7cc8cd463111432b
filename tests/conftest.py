"""Test setup shared by every test module.

Two logical CPU devices are configured before TensorFlow initializes, so distribution
tests can run `MirroredStrategy` over ("/cpu:0", "/cpu:1") on a CPU-only machine; the
default strategy keeps using /cpu:0.
"""
import importlib.util
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))  # tests/torch_resnet.py helpers

import dwlt_tf  # noqa: E402,F401  (selects Keras 2 first)
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED_CIFAR = os.path.join(REPO, "data", "cifar10_jpeg_small")


def load_config(name, variant=None):
    """configs/<name>.py's get_config(variant) (its default variant when None)."""
    spec = importlib.util.spec_from_file_location(f"cfg_{name}",
                                                  os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


_MIRRORED = []


def mirrored_strategy():
    """One MirroredStrategy over the two logical CPUs for the whole test session.

    TensorFlow keys collective ops by (group, instance) numbers that every new strategy
    object starts again from; a second strategy in the same process can collide with
    the first one's cached collectives ("Shape mismatch in the collective instance").
    Real programs create one strategy per process (`runtime.strategy` caches it).
    """
    if not _MIRRORED:
        _MIRRORED.append(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    return _MIRRORED[0]


@pytest.fixture
def bundled_cifar():
    """Root of the bundled real CIFAR-10 JPEG subset (ImageFolder layout)."""
    return BUNDLED_CIFAR
