"""Tests for dwlt_tf.data: reference splits, preprocessing, determinism, missing data."""
import os
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dwlt_tf import data

# Sizes of the real TFDS splits.
_SIZES = {"cifar10": {"train": 50000, "test": 10000},
          "cifar100": {"train": 50000, "test": 10000},
          "svhn_cropped": {"train": 73257, "test": 26032}}


def _fake_as_dataset(builder, split, **kwargs):
    """Stand-in for TFDS's reader: real split sizes, TFDS-style ids, stored shuffled.

    The image encodes the original index (pixel [0, 0, 0] = index % 251) so tests can
    check which examples a split holds.
    """
    n = _SIZES[builder.name][split]
    width = 6 if builder.name == "svhn_cropped" else 5
    num_classes = builder.info.features["label"].num_classes
    # TFDS stores examples in a shuffled order: mimic that with a fixed permutation.
    order = np.random.RandomState(0).permutation(n)

    def make(i):
        pixel = tf.cast(i % 251, tf.uint8)
        image = tf.pad(tf.reshape(pixel, (1, 1, 1)), [[0, 31], [0, 31], [0, 2]])
        return {"id": tf.strings.join([f"{split}_", tf.strings.as_string(i, width=width,
                                                                          fill="0")]),
                "image": image, "label": i % num_classes}
    return tf.data.Dataset.from_tensor_slices(order).map(make)


@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(as_dataset_fn=_fake_as_dataset), mock.patch.object(
            tfds.core.DatasetBuilder, "is_prepared", return_value=True):
        yield


def _indices(ds):
    batches = ds.map(lambda ex: ex["index"]).batch(100_000).as_numpy_iterator()
    return np.sort(np.concatenate(list(batches)))


@pytest.mark.parametrize("name,pool,val_end,rate", [
    ("cifar10", 45000, 50000, 1.0), ("cifar10", 45000, 50000, 0.1),
    ("cifar10", 45000, 50000, 0.01), ("cifar100", 45000, 50000, 0.1),
    ("svhn", 68257, 73257, 1.0), ("svhn", 68257, 73257, 0.01)])
def test_reference_splits_and_data_rate(mock_tfds, tmp_path, name, pool, val_end, rate):
    splits = data.load(data.DataSpec(name, data_dir=str(tmp_path), data_rate=rate,
                                     image_size=32, augment="cifar"))
    assert splits.num_train == int(pool * rate)
    assert splits.num_val == val_end - pool
    # The training set is the first int(pool * rate) images in original order.
    np.testing.assert_array_equal(_indices(splits.train), np.arange(int(pool * rate)))
    if rate == 0.01:  # full pass over the bigger splits once is enough
        np.testing.assert_array_equal(_indices(splits.val), np.arange(pool, val_end))
        assert len(_indices(splits.test)) == splits.num_test
    assert splits.num_classes == (100 if name == "cifar100" else 10)


def test_missing_tfds_data_is_a_clear_error(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load(data.DataSpec("cifar10", data_dir=str(tmp_path)))
    message = str(err.value)
    assert "'cifar10'" in message and str(tmp_path) in message
    assert os.path.join(str(tmp_path), "downloads", "manual") in message
    assert "cifar-10-binary.tar.gz" in message
    assert "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd" in message
    assert "download=True" in message
    assert not os.path.exists(os.path.join(str(tmp_path), "cifar10"))  # nothing prepared


def test_missing_image_folder_is_a_clear_error(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="train/<class>"):
        data.load(data.DataSpec("imagefolder", path=str(tmp_path / "nowhere")))


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="mnist", data_dir="/d"), "Unknown dataset 'mnist'"),
    (dict(name="cifar10", data_dir="/d", data_rate=0.0), r"data_rate must be in \(0, 1\], got 0.0"),
    (dict(name="cifar10", data_dir="/d", data_rate=1.5), "got 1.5"),
    (dict(name="cifar10"), "needs `data_dir`"),
    (dict(name="imagefolder"), "needs `path`"),
    (dict(name="cifar10", data_dir="/d", augment="autoaugment"), "Unknown augment"),
    (dict(name="cifar10", data_dir="/d", image_size=16), "image_size must be an int >= 32"),
])
def test_bad_specs_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.DataSpec(**kwargs)


def test_image_folder_on_bundled_real_images(bundled_cifar):
    spec = data.DataSpec("imagefolder", path=bundled_cifar, image_size=32, augment="cifar",
                         stats="cifar10")
    splits = data.load(spec)
    assert splits.class_names[:3] == ["airplane", "automobile", "bird"]
    assert (splits.num_train, splits.num_val, splits.num_test) == (1800, 200, 1000)
    batch = next(iter(data.eval_batches(splits, "test", 16)))
    assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(batch["image"])) and float(tf.reduce_max(batch["image"])) <= 1.0
    assert float(tf.reduce_mean(batch["image"])) > 0.2  # real pixels, not zeros
    assert splits.spec.mean_std == data.STATS["cifar10"]


def test_image_folder_data_rate_is_per_class(bundled_cifar):
    splits = data.load(data.DataSpec("imagefolder", path=bundled_cifar, image_size=32,
                                     augment="cifar", data_rate=0.1))
    labels = [ex["label"] for ex in splits.train.as_numpy_iterator()]
    assert np.bincount(labels).tolist() == [18] * 10


def test_class_subset_relabels(bundled_cifar):
    splits = data.load(data.DataSpec("imagefolder", path=bundled_cifar, image_size=32,
                                     augment="cifar", classes=(5, 6, 7, 8, 9)))
    assert splits.num_classes == 5 and splits.class_names[0] == "dog"
    labels = {int(ex["label"]) for ex in splits.test.as_numpy_iterator()}
    assert labels == {0, 1, 2, 3, 4}
    assert splits.num_test == 500


def _epoch(splits, **kwargs):
    return [{k: v.numpy() for k, v in b.items()}
            for b in data.train_batches(splits, batch_size=32, seed=3, **kwargs)]


def test_training_batches_are_deterministic_and_resumable(bundled_cifar):
    splits = data.load(data.DataSpec("imagefolder", path=bundled_cifar, image_size=32,
                                     augment="cifar", data_rate=0.2))
    first = _epoch(splits, epoch=0, with_noise=True)
    again = _epoch(splits, epoch=0, with_noise=True)
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert sum(len(b["label"]) for b in first) == splits.num_train
    # Resuming mid-epoch yields exactly the rest of the epoch.
    resumed = _epoch(splits, epoch=0, with_noise=True, skip_batches=3)
    assert len(resumed) == len(first) - 3
    for a, b in zip(first[3:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["noise"], b["noise"])
    # Another epoch: another order and other augmentations.
    other = _epoch(splits, epoch=1)
    assert not np.array_equal(first[0]["index"], other[0]["index"])
    noise = np.concatenate([b["noise"] for b in first])
    assert noise.min() >= -1.0 and noise.max() <= 1.0 and abs(noise.mean()) < 0.05


def test_imagenet_preprocessing_sizes():
    spec = data.DataSpec("imagefolder", path="/unused", image_size=224, augment="imagenet")
    image = tf.cast(tf.random.uniform((300, 400, 3), 0, 255), tf.uint8)
    train = data._augment_train(image, spec, tf.constant([1, 2], tf.int64))
    assert train.shape == (224, 224, 3)
    evaluation = data._preprocess_eval(image, spec)
    assert evaluation.shape == (224, 224, 3)
    # Resize(256) then CenterCrop(224) of a 300x400 image keeps its central region.
    small = data._preprocess_eval(tf.zeros((32, 32, 3), tf.uint8), spec)
    assert small.shape == (224, 224, 3)


def test_split_smaller_than_the_reference_splits_is_named(mock_tfds, tmp_path):
    with mock.patch.object(data, "_split_size", return_value=30000):
        with pytest.raises(data.DatasetError, match=r"'cifar10' split 'train' .* has 30000 examples; "
                                             r"the reference splits need 50000"):
            data.load(data.DataSpec("cifar10", data_dir=str(tmp_path), image_size=32,
                                    augment="cifar"))


def test_a_damaged_image_fails_naming_its_file(tmp_path):
    from conftest import REPO  # pylint: disable=import-outside-toplevel
    from dwlt_tf import evaluate, models  # pylint: disable=import-outside-toplevel
    root = tmp_path / "folder"
    jpegs = os.path.join(REPO, "data", "cifar10_jpeg_small", "test", "cat")
    pngs = os.path.join(REPO, "data", "cifar10_png")
    for split in ("train", "test"):
        for label, source, ext in (("cat", jpegs, ".jpg"), ("png", pngs, ".png")):
            (root / split / label).mkdir(parents=True)
            for name in sorted(n for n in os.listdir(source) if n.endswith(ext))[:6]:
                with open(os.path.join(source, name), "rb") as f:
                    (root / split / label / name).write_bytes(f.read())
    spec = data.DataSpec("imagefolder", path=str(root), image_size=32, augment="cifar",
                         val_fraction=0.2)
    model = models.build_resnet("resnet18", 2, "cifar", base_width=4)
    # Whole JPEG and PNG files pass the check (as every bundled image does elsewhere).
    assert evaluate.evaluate(model, data.load(spec), "train", 8, attack=None).count == 10
    # A file cut short (an interrupted copy) and an empty one are named.
    whole = (root / "train" / "cat" / "0000.jpg").read_bytes()
    (root / "train" / "cat" / "0000.jpg").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(data.CorruptImageError, match=r"'.*/train/cat/0000\.jpg' is damaged"):
        evaluate.evaluate(model, data.load(spec), "train", 8, attack=None)
    (root / "train" / "cat" / "0000.jpg").write_bytes(whole)
    (root / "test" / "png" / "cifar10_00_3.png").write_bytes(b"")
    with pytest.raises(data.CorruptImageError, match=r"test/png/cifar10_00_3\.png' is damaged"):
        evaluate.evaluate(model, data.load(spec), "test", 8, attack=None)
