"""Tests for dwlt_tf.data: reference splits, preprocessing, determinism, missing data."""
import functools
import os
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dwlt_tf import data, identity, pipeline, preprocess

# Sizes of the real TFDS splits.
_SIZES = {"cifar10": {"train": 50000, "test": 10000},
          "cifar100": {"train": 50000, "test": 10000},
          "svhn_cropped": {"train": 73257, "test": 26032}}


@functools.lru_cache(maxsize=None)
def _png(value):
    image = np.zeros((32, 32, 3), np.uint8)
    image[0, 0, 0] = value
    return tf.io.encode_png(image).numpy()


@functools.lru_cache(maxsize=None)
def _fake_records(name, split, size=None):
    """Stand-in for a TFDS ArrayRecord split: serialized examples with real sizes and
    TFDS-style ids, stored shuffled (as TFDS stores them).

    The image encodes the original index (pixel [0, 0, 0] = index % 251) so tests can
    check which examples a split holds. Returns (records, storage order).
    """
    n = size or _SIZES[name][split]
    width = 6 if name == "svhn_cropped" else 5
    num_classes = 100 if name == "cifar100" else 10
    order = np.random.RandomState(0).permutation(n)  # storage position -> original index
    records = []
    for i in order:
        feature = {
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[_png(i % 251)])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % num_classes])),
            "id": tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[f"{split}_{i:0{width}d}".encode()]))}
        records.append(tf.train.Example(features=tf.train.Features(feature=feature))
                       .SerializeToString())
    return records, order


class _FakeSource(list):
    def __getitems__(self, keys):
        return [self[k] for k in keys]


def _mocked_tfds(sizes=None):
    def as_data_source(builder, split, **kwargs):
        del kwargs
        return _FakeSource(_fake_records(builder.name, split, (sizes or {}).get(split))[0])
    return mock.patch.multiple(tfds.core.DatasetBuilder, as_data_source=as_data_source,
                               is_prepared=lambda self: True)


@pytest.fixture
def mock_tfds():
    with _mocked_tfds():
        yield


def _originals(splits, split):
    """Original indices of a split's examples, read through the pipeline (pixel codes)."""
    images = np.concatenate([b["image"].numpy()[:, 0, 0, 0] for b in
                             pipeline.eval_batches(splits, split, 1000)])
    return np.rint(images * 255).astype(int)


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
    _, order = _fake_records(data.DATASETS[name].tfds_name, "train")
    np.testing.assert_array_equal(order[splits.train.positions], np.arange(int(pool * rate)))
    np.testing.assert_array_equal(order[splits.val.positions], np.arange(pool, val_end))
    assert splits.num_test == _SIZES[data.DATASETS[name].tfds_name]["test"]
    if rate == 0.01:  # and the pipeline reads exactly those images
        np.testing.assert_array_equal(_originals(splits, "train"),
                                      np.arange(int(pool * rate)) % 251)
    assert splits.num_classes == (100 if name == "cifar100" else 10)


def test_missing_tfds_data_is_a_clear_error(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load(data.DataSpec("cifar10", data_dir=str(tmp_path)))
    message = str(err.value)
    assert "'cifar10'" in message and str(tmp_path) in message
    assert os.path.join(str(tmp_path), "downloads", "manual") in message
    assert "cifar-10-binary.tar.gz" in message
    assert "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd" in message
    assert "download=True" in message and "\n" not in message  # the trainers' one line
    assert not os.path.exists(os.path.join(str(tmp_path), "cifar10"))  # nothing prepared


def test_missing_image_folder_is_a_clear_error(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="train/<class>"):
        data.load(data.DataSpec("imagefolder", path=str(tmp_path / "nowhere")))


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="mnist", data_dir="/d"), "dataset.name='mnist': choose one of"),
    (dict(name="cifar10", data_dir="/d", data_rate=0.0),
     r"dataset.data_rate=0.0: must be a number in \(0.0, 1.0\]"),
    (dict(name="cifar10", data_dir="/d", data_rate=1.5), "dataset.data_rate=1.5"),
    (dict(name="cifar10"), "needs `data_dir`"),
    (dict(name="imagefolder"), "needs `path`"),
    (dict(name="cifar10", data_dir="/d", augment="autoaugment"),
     "dataset.augment='autoaugment': choose one of"),
    (dict(name="cifar10", data_dir="/d", image_size=16), "dataset.image_size=16: must be an "
                                                         "int >= 32"),
    (dict(name="cifar10", data_dir="/d", path="/images"), "dataset.path='/images': TFDS "
                                                          "dataset 'cifar10' is read from"),
    (dict(name="imagefolder", path="/p", data_dir="/d"), "dataset.data_dir='/d': an "
                                                          "ImageFolder dataset"),
    (dict(name="cifar10", data_dir="/d", classes=("a",)), r"dataset.classes=\('a',\): must "
                                                           "be a sequence of ints"),
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
    batch = next(iter(pipeline.eval_batches(splits, "test", 16)))
    assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(batch["image"])) and float(tf.reduce_max(batch["image"])) <= 1.0
    assert float(tf.reduce_mean(batch["image"])) > 0.2  # real pixels, not zeros
    assert splits.spec.mean_std == data.STATS["cifar10"]


def _labels(splits, split):
    return np.concatenate([b["label"].numpy() for b in pipeline.eval_batches(splits, split, 1000)])


def test_image_folder_data_rate_is_per_class(bundled_cifar):
    splits = data.load(data.DataSpec("imagefolder", path=bundled_cifar, image_size=32,
                                     augment="cifar", data_rate=0.1))
    assert np.bincount(_labels(splits, "train")).tolist() == [18] * 10
    # Validation holds the last 10 % of each class's files sorted by name; training
    # takes the first files of the rest.
    val_files = {os.path.basename(splits.val.table.paths[p]) for p in splits.val.positions}
    assert val_files == {f"{i:04d}.jpg" for i in range(180, 200)}
    train_files = {os.path.basename(splits.train.table.paths[p]) for p in splits.train.positions}
    assert train_files == {f"{i:04d}.jpg" for i in range(18)}


def test_class_subset_relabels(bundled_cifar):
    splits = data.load(data.DataSpec("imagefolder", path=bundled_cifar, image_size=32,
                                     augment="cifar", classes=(5, 6, 7, 8, 9)))
    assert splits.num_classes == 5 and splits.class_names[0] == "dog"
    assert set(_labels(splits, "test").tolist()) == {0, 1, 2, 3, 4}
    assert splits.num_test == 500


def test_test_examples_are_evenly_spaced_over_the_selected_classes(bundled_cifar):
    base = dict(path=bundled_cifar, image_size=32, augment="cifar", classes=(5, 6, 7, 8, 9))
    full = data.load(data.DataSpec("imagefolder", **base))
    part = data.load(data.DataSpec("imagefolder", test_examples=125, **base))
    assert part.num_test == 125
    # Every 4th of the 500 class-sorted test examples: each class keeps 25 of its 100.
    np.testing.assert_array_equal(part.test.positions, full.test.positions[::4])
    assert np.bincount(_labels(part, "test")).tolist() == [25] * 5
    np.testing.assert_array_equal(part.train.positions, full.train.positions)
    np.testing.assert_array_equal(part.val.positions, full.val.positions)
    assert part.example_order("test") == full.example_order("test", indices=np.arange(0, 500, 4))
    # Part of a run's identity only when set (existing runs keep their keys).
    assert "test_examples" not in identity.describe(full.spec)
    assert identity.describe(part.spec)["test_examples"] == 125
    with pytest.raises(ValueError, match=r"dataset.test_examples=501: the test split of "
                                         r"'cifar10_jpeg_small\[5,6,7,8,9\]' holds 500"):
        data.load(data.DataSpec("imagefolder", test_examples=501, **base))
    with pytest.raises(ValueError, match=r"dataset.test_examples=-1"):
        data.DataSpec("imagefolder", test_examples=-1, **base)


def test_test_examples_on_tfds_splits(mock_tfds, tmp_path):
    spec = data.DataSpec("cifar10", data_dir=str(tmp_path), image_size=32, augment="cifar",
                         test_examples=2500)
    splits = data.load(spec)
    assert splits.num_test == 2500 and splits.num_train == 45000
    np.testing.assert_array_equal(splits.test.positions, np.arange(0, 10000, 4))


def _epoch(splits, batch_size=32, **kwargs):
    return [{k: v.numpy() for k, v in b.items()}
            for b in pipeline.train_batches(splits, batch_size=batch_size, seed=3, **kwargs)]


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
    image = tf.cast(tf.random.uniform((300, 400, 3), 0, 255), tf.uint8)
    for encoded in (tf.io.encode_jpeg(image), tf.io.encode_png(image)):
        train = preprocess.train_imagenet(encoded, "x", 224, tf.constant([1, 2], tf.int64))
        assert train.shape == (224, 224, 3)
        assert preprocess.eval_imagenet(encoded, "x", 224).shape == (224, 224, 3)
    # Resize(256) then CenterCrop(224) of an image smaller than 224.
    small = preprocess.for_eval(tf.zeros((32, 32, 3), tf.uint8), 224, "imagenet")
    assert small.shape == (224, 224, 3)


def test_split_smaller_than_the_reference_splits_is_named(tmp_path):
    with _mocked_tfds({"train": 30000}):
        with pytest.raises(data.DatasetError, match=r"'cifar10' split 'train' .* has 30000 "
                                                    r"examples; the reference splits need 50000"):
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


@pytest.mark.parametrize("data_rate,batch_size,pipelines,replicas", [
    (0.2, 64, 1, 2), (0.2, 64, 2, 2), (0.2, 64, 2, 4),
    (0.03, 16, 2, 4)])  # 50 examples: the last step's 2 go to 2 of 4 replicas
def test_per_replica_shares_are_disjoint_and_make_up_the_global_batches(
        bundled_cifar, data_rate, batch_size, pipelines, replicas):
    splits = data.load(data.DataSpec("imagefolder", path=bundled_cifar, image_size=32,
                                     augment="cifar", data_rate=data_rate))
    whole = _epoch(splits, epoch=1, batch_size=batch_size, with_noise=True)
    local = replicas // pipelines
    shares = [_epoch(splits, epoch=1, batch_size=batch_size, with_noise=True,
                     input_context=tf.distribute.InputContext(pipelines, p, replicas))
              for p in range(pipelines)]
    read = [np.concatenate([b["index"] for b in share]) for share in shares]
    for a in range(pipelines):  # each pipeline reads its own examples only
        for b in range(a + 1, pipelines):
            assert not set(read[a]) & set(read[b])
    for step, batch in enumerate(whole):
        parts = [shares[p][step * local + r] for p in range(pipelines) for r in range(local)]
        for key in batch:
            np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]),
                                          batch[key])
    assert all(len(share) == len(whole) * local for share in shares)
