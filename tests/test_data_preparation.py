"""The real TFDS preparation path, offline: original-format archives -> TFDS's own
builders (ArrayRecord) -> dwlt_tf's reference splits, with no network access."""
import dataclasses
import glob
import os
import socket
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import archives
from dwlt_tf import data, pipeline


@pytest.fixture(autouse=True)
def no_network():
    """Any connection attempt fails the test: preparation must stay offline."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")
    with mock.patch.object(socket.socket, "connect", refuse), \
            mock.patch.object(socket, "create_connection", refuse):
        yield


@pytest.fixture
def scaled_reference_split():
    """The reference's CIFAR rule (validation = a fixed tail of the original order,
    training = the head of the rest) at the size of the test archive: 100 images."""
    layout = data.DATASETS["cifar10"]
    with mock.patch.dict(data.DATASETS, {"cifar10": dataclasses.replace(
            layout, val_start=80, val_end=100)}):
        yield


def _images(splits, split):
    return np.concatenate([np.rint(b["image"].numpy() * 255).astype(np.uint8)
                           for b in pipeline.eval_batches(splits, split, 64)])


def test_cifar10_from_its_original_binary_archive(cifar10_archive, scaled_reference_split):
    data_dir, archive, train, test = cifar10_archive
    spec = data.DataSpec("cifar10", data_dir=data_dir, data_rate=0.5, image_size=32,
                         augment="cifar")
    with archives.register_checksums("cifar10", {archives.CIFAR10_URL: archive}):
        splits = data.load(spec)  # TFDS prepares it from downloads/manual, offline
    assert glob.glob(os.path.join(data_dir, "cifar10", "*", "*.array_record*"))
    assert splits.class_names == list(archives.CIFAR10_NAMES)
    assert (splits.num_train, splits.num_val, splits.num_test) == (40, 20, 50)
    # The reference split by original (archive) order, pixel for pixel.
    np.testing.assert_array_equal(_images(splits, "train"), train[:40])
    np.testing.assert_array_equal(_images(splits, "val"), train[80:100])
    assert sorted(map(bytes, _images(splits, "test"))) == sorted(map(bytes, test))
    assert splits.fingerprint.startswith("tfds:cifar10/3.0.2:")
    # Prepared once: the next load reads it (no archive, no checksums needed).
    os.rename(archive, archive + ".moved")
    try:
        assert data.load(spec).num_train == 40
    finally:
        os.rename(archive + ".moved", archive)


def test_a_damaged_archive_is_named_before_anything_is_prepared(cifar10_archive, tmp_path):
    data_dir, archive, _, _ = cifar10_archive
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    with open(archive, "rb") as f:
        (manual / "cifar-10-binary.tar.gz").write_bytes(f.read()[:-100])
    with archives.register_checksums("cifar10", {archives.CIFAR10_URL: archive}):
        with pytest.raises(data.DatasetError, match=r"does not match the size and sha256") as e:
            data.load(data.DataSpec("cifar10", data_dir=str(tmp_path), image_size=32))
    assert f"{manual}/cifar-10-binary.tar.gz" in str(e.value)
    assert not glob.glob(str(tmp_path / "cifar10" / "*" / "*.array_record*"))


def test_svhn_from_its_original_mat_files(tmp_path):
    from conftest import bundled_images  # pylint: disable=import-outside-toplevel
    images, labels = bundled_images("train", 6)  # 60 images, "digits" = CIFAR labels
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    files = {}
    for name, chunk in (("train", slice(0, 40)), ("test", slice(40, 55)),
                        ("extra", slice(55, 60))):
        files[archives.SVHN_URL + f"{name}_32x32.mat"] = archives.svhn_mat(
            str(manual / f"{name}_32x32.mat"), images[chunk], labels[chunk])
    layout = data.DATASETS["svhn"]
    with archives.register_checksums("svhn_cropped", files), mock.patch.dict(
            data.DATASETS, {"svhn": dataclasses.replace(layout, val_start=30, val_end=40)}):
        splits = data.load(data.DataSpec("svhn", data_dir=str(tmp_path), image_size=32,
                                         augment="cifar"))
    assert (splits.num_train, splits.num_val, splits.num_test) == (30, 10, 15)
    np.testing.assert_array_equal(_images(splits, "train"), images[:30])
    np.testing.assert_array_equal(_images(splits, "val"), images[30:40])
    read = np.concatenate([b["label"].numpy() for b in pipeline.eval_batches(splits, "train", 64)])
    np.testing.assert_array_equal(read, labels[:30])  # digit 0 stored as 10 comes back as 0


def test_imagenet_from_its_train_and_validation_tars(imagenet_archive):
    data_dir, train, val = imagenet_archive
    splits = data.load(data.DataSpec("imagenet", data_dir=data_dir, image_size=64))
    assert (splits.num_train, splits.num_val, splits.num_test) == (12, 5, 5)
    assert splits.num_classes == 1000
    stored = splits.val.read(tf.data.Dataset.range(5))
    assert sorted(ex["encoded"] for ex in stored.as_numpy_iterator()) == sorted(val)
    batch = next(iter(pipeline.train_batches(splits, 12, seed=0, epoch=0)))
    assert batch["image"].shape == (12, 64, 64, 3)
    assert sorted(batch["label"].numpy().tolist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_missing_imagenet_names_its_files_at_the_expanded_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.load(data.DataSpec("imagenet", data_dir="~/tensorflow_datasets"))
    message = str(error.value)
    manual = os.path.join(str(tmp_path), "tensorflow_datasets", "downloads", "manual")
    assert manual in message and "~" not in message
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message


def test_a_tfrecord_only_preparation_is_refused_with_the_conversion(cifar10_archive, tmp_path):
    data_dir, archive, _, _ = cifar10_archive
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    os.link(archive, manual / "cifar-10-binary.tar.gz")
    with archives.register_checksums("cifar10", {archives.CIFAR10_URL: archive}):
        tfds.builder("cifar10", data_dir=str(tmp_path)).download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual)),
            file_format="tfrecord")
    with pytest.raises(data.DatasetError, match=r"stored only as tfrecord.*convert_format"):
        data.load(data.DataSpec("cifar10", data_dir=str(tmp_path), image_size=32))
