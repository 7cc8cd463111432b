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


@pytest.fixture(scope="session")
def trained_resnet(tmp_path_factory):
    """(model, splits): a tiny wrapped ResNet-18, 30 % pruned, trained for 6 epochs on the
    bundled real images of classes 0-4. Tests that change its variables restore them."""
    from dwlt_tf import train  # pylint: disable=import-outside-toplevel
    splits = bundled_cifar_splits()
    spec = train.TrainSpec(epochs=6, batch_size=64, lr=0.05, eval_attack=None, test=False,
                           verbose=0)
    result = train.fit(pruned_resnet_fn(splits, seed=0, sparsity=0.3), splits, spec,
                       str(tmp_path_factory.mktemp("trained")))
    return result.model, splits


def bundled_cifar_splits():
    """The bundled real images of CIFAR-10 classes 0-4 at 32 px, CIFAR augmentation."""
    from dwlt_tf import data  # pylint: disable=import-outside-toplevel
    return data.load(data.DataSpec("imagefolder", path=BUNDLED_CIFAR, image_size=32,
                                   augment="cifar", stats="cifar10", classes=(0, 1, 2, 3, 4)))


def pruned_resnet_fn(splits, seed, sparsity):
    """A function building a width-8 ResNet-18 (CIFAR stem) for `splits`, wrapped for
    pruning with global magnitude masks of `sparsity`, initialized from `seed`."""
    import tf_keras  # pylint: disable=import-outside-toplevel
    from dwlt_tf import models, pruning, pruning_wrapper  # pylint: disable=import-outside-toplevel

    def build():
        tf_keras.utils.set_random_seed(seed)
        model = pruning_wrapper.wrap(models.build_resnet("resnet18", splits.num_classes, "cifar",
                                                         *splits.spec.mean_std, base_width=8))
        pruning_wrapper.set_masks(model, pruning.global_magnitude_masks(
            pruning_wrapper.get_kernels(model), None, sparsity))
        return model
    return build


@pytest.fixture
def bundled_cifar():
    """Root of the bundled real CIFAR-10 JPEG subset (ImageFolder layout)."""
    return BUNDLED_CIFAR


# ------------------------------------------------------------- prepared TFDS datasets
# Real TFDS preparations, offline, from original-format archives written from the
# bundled images (tests/archives.py): the path users take with downloaded archives.

def bundled_images(split, per_class, size=None):
    """(uint8 images [N, 32, 32, 3] or JPEG bytes resized to `size`, labels), the first
    `per_class` files of each class of the bundled CIFAR-10 JPEGs, class by class."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from PIL import Image  # pylint: disable=import-outside-toplevel
    images, labels = [], []
    root = os.path.join(BUNDLED_CIFAR, split)
    for label, name in enumerate(sorted(os.listdir(root))):
        for file in sorted(os.listdir(os.path.join(root, name)))[:per_class]:
            image = Image.open(os.path.join(root, name, file)).convert("RGB")
            if size:
                buffer = __import__("io").BytesIO()
                image.resize(size, Image.BICUBIC).save(buffer, format="JPEG", quality=90)
                images.append(buffer.getvalue())
            else:
                images.append(np.asarray(image))
            labels.append(label)
    return (images if size else np.stack(images)), np.array(labels)


@pytest.fixture(scope="session")
def cifar10_archive(tmp_path_factory):
    """A data_dir whose downloads/manual holds a cifar-10-binary.tar.gz of 100 training
    (10 per class, class by class) and 50 test images; returns (data_dir, archive,
    training images, test images)."""
    import archives  # pylint: disable=import-outside-toplevel
    data_dir = tmp_path_factory.mktemp("tfds_cifar10")
    manual = data_dir / "downloads" / "manual"
    manual.mkdir(parents=True)
    train, train_labels = bundled_images("train", 10)
    test, test_labels = bundled_images("test", 5)
    path = archives.cifar10_binary(str(manual / "cifar-10-binary.tar.gz"), train, train_labels,
                                   test, test_labels)
    return str(data_dir), path, train, test


@pytest.fixture(scope="session")
def imagenet_archive(tmp_path_factory):
    """A data_dir whose downloads/manual holds ImageNet's train and validation tars: 3
    synsets x 4 JPEGs (bundled images at 80x64) and 5 validation JPEGs."""
    import archives  # pylint: disable=import-outside-toplevel
    data_dir = tmp_path_factory.mktemp("tfds_imagenet")
    jpegs, labels = bundled_images("train", 4, size=(80, 64))
    synsets = archives.imagenet_synsets(3)
    train = {synset: [j for j, l in zip(jpegs, labels) if l == k]
             for k, synset in enumerate(synsets)}
    val, _ = bundled_images("test", 1, size=(72, 96))
    archives.imagenet_tars(str(data_dir / "downloads" / "manual"), train, val[:5])
    return str(data_dir), train, val[:5]


# ------------------------------------------------------------------ read-only copies

def snapshot(root):
    """{path: (size, mtime_ns)} of everything under `root`: compare to see no write."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            out[path] = (info.st_size if name in filenames else 0, info.st_mtime_ns)
    return out


@pytest.fixture
def read_only_copy():
    """read_only_copy(src, dst): copies a finished run to `dst` and makes it truly read-only
    (a read-only bind mount as root -- root writes through file permissions -- else the
    permissions); undone at the end of the test."""
    import shutil  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel
    mounted, chmodded = [], []

    def make(src, dst):
        shutil.copytree(src, dst)
        if os.geteuid() == 0:
            steps = [["mount", "--bind", str(dst), str(dst)],
                     ["mount", "-o", "remount,bind,ro", str(dst)]]
            for step in steps:
                if subprocess.run(step, capture_output=True).returncode != 0:
                    if step is steps[1]:
                        subprocess.run(["umount", str(dst)], capture_output=True)
                    pytest.skip("running as root without mount rights: cannot make a "
                                "directory read-only")
            mounted.append(str(dst))
        else:
            for dirpath, dirnames, filenames in os.walk(dst):
                for name in filenames + dirnames:
                    os.chmod(os.path.join(dirpath, name), 0o555 if name in dirnames else 0o444)
            os.chmod(dst, 0o555)
            chmodded.append(str(dst))
        probe = os.path.join(str(dst), ".write-probe")
        try:
            open(probe, "w").close()
        except OSError:
            return dst
        pytest.fail(f"{dst} is still writable")

    yield make
    import subprocess as sp  # pylint: disable=import-outside-toplevel
    for path in mounted:
        sp.run(["umount", path], capture_output=True)
    for path in chmodded:
        for dirpath, dirnames, filenames in os.walk(path):
            os.chmod(dirpath, 0o755)
