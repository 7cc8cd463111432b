"""Input pipelines: the reference's splits and preprocessing, through TFDS.

Every dataset is read through TFDS from a user-given `data_dir` (`cifar10`, `cifar100`,
`svhn_cropped`, `imagenet2012`) or from an ImageFolder-style directory
(`<root>/<split>/<class>/<image>`, read with `tfds.ImageFolder`). Nothing is downloaded
unless the caller passes `download=True`; missing data is a `DatasetNotFoundError`
naming the dataset, the directory searched and the files to provide.

Splits reproduce the reference code (VITA-Group/Double-Win-LTH, `dataset.py`):

* CIFAR-10/100: validation = training images 45000-49999, training = the first
  int(45000 * data_rate) training images, test = the test split. "First" is the order
  of the original batch files, recovered from TFDS's `id` feature (TFDS stores
  examples shuffled).
* SVHN: validation = training images 68257-73256, training = the first
  int(68257 * data_rate); test = the test split.
* ImageNet: training = the first int(N * data_rate) of TFDS's train split (the
  reference uses all of it), validation = test = TFDS's validation split.
* ImageFolder: validation = the `val`/`validation` folder if present, otherwise the last
  `val_fraction` of each class's (sorted) training files; training = the first
  int(n * data_rate) of each class's remaining files; test = the `test` folder.

Preprocessing ("augment"): `imagenet` = RandomResizedCrop(size) + flip for training,
resize(shorter side = size * 256 / 224) + center crop for evaluation (the reference's
224-pixel recipe); `cifar` = 4-pixel zero padding + random crop + flip for training,
identity for evaluation (the reference's 32-pixel mode). Pixels are float32 in [0, 1];
normalization lives in the model (`models.Normalization`), with each dataset's
constants in `STATS`.

Determinism: the training order of epoch e is a shuffle seeded by (seed, e), every
random augmentation is keyed by (seed, e, example index), and an optional per-example
`noise` tensor in [-1, 1] (PGD's random start) is keyed the same way. Results are
therefore identical across runs, across replica counts and after resuming mid-epoch
(`skip_batches`).
"""
import contextlib
import dataclasses
import hashlib
import os
import re
from typing import Optional, Sequence, Tuple

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tensorflow_datasets as tfds

from dwlt_tf import errors, identity

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Normalization constants exactly as the reference code uses them.
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1201, 0.1231, 0.1052)),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}

AUGMENTATIONS = ("imagenet", "cifar")


@dataclasses.dataclass(frozen=True)
class _TfdsLayout:
    """Where a TFDS dataset's reference splits come from."""
    tfds_name: str
    num_classes: int
    stats: str
    train_split: str
    test_split: str
    # Reference split of TFDS's train split by original index: [0, val_start) is the
    # training pool, [val_start, val_end) validation. None: validation = test split.
    val_start: Optional[int] = None
    val_end: Optional[int] = None
    id_prefix: Optional[str] = None  # "train_" when the `id` feature holds the index
    cache: bool = True


DATASETS = {
    "cifar10": _TfdsLayout("cifar10", 10, "cifar10", "train", "test", 45000, 50000, "train_"),
    "cifar100": _TfdsLayout("cifar100", 100, "cifar100", "train", "test", 45000, 50000,
                            "train_"),
    "svhn": _TfdsLayout("svhn_cropped", 10, "svhn", "train", "test", 68257, 73257, "train_"),
    "imagenet": _TfdsLayout("imagenet2012", 1000, "imagenet", "train", "validation",
                            cache=False),
    "imagefolder": None,  # described by `DataSpec.path`
}


class DatasetError(errors.UserError):
    """The data on disk cannot serve the requested dataset (the message says why)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset is not available locally (and downloading was not requested)."""


class CorruptImageError(DatasetError):
    """An image file of an ImageFolder dataset is damaged; the message names it."""


_UNREADABLE = "dwlt_tf: unreadable image file (truncated, empty or not a JPEG/PNG):"


def _contains_bytes(data, pattern):
    """Whether the uint8 vector `data` contains the byte string `pattern` (no zero bytes)."""
    n = len(pattern)
    data = tf.concat([data, tf.zeros([n], tf.uint8)], 0)  # any length, even empty
    length = tf.shape(data)[0]
    hits = [tf.equal(data[i:length - (n - 1 - i)], byte) for i, byte in enumerate(pattern)]
    return tf.reduce_any(tf.reduce_all(tf.stack(hits), axis=0))


def _looks_complete(contents):
    """A JPEG with its end-of-image marker, or a PNG with its IEND chunk, near the end.

    Catches the usual damage -- a file cut short by an interrupted copy or download, an
    empty file, something that is not an image -- from bytes already read, before the
    decoder fails without saying which file it was decoding.
    """
    head = tf.strings.substr(contents, 0, 8)
    start = tf.maximum(tf.strings.length(contents) - 1024, 0)
    tail = tf.io.decode_raw(tf.strings.substr(contents, start, 1024), tf.uint8)
    jpeg = tf.logical_and(tf.equal(tf.strings.substr(head, 0, 2), b"\xff\xd8"),
                          _contains_bytes(tail, b"\xff\xd9"))
    png = tf.logical_and(tf.equal(head, b"\x89PNG\r\n\x1a\n"), _contains_bytes(tail, b"IEND"))
    return tf.logical_or(jpeg, png)


def _read_image(path):
    """Reads and decodes an image file; a damaged file fails naming its path."""
    contents = tf.io.read_file(path)
    check = tf.debugging.Assert(_looks_complete(contents), [_UNREADABLE, path])
    with tf.control_dependencies([check]):
        return tf.io.decode_image(contents, channels=3, expand_animations=False)


@contextlib.contextmanager
def unreadable_images_named():
    """Turns the failure of a damaged image file inside a pipeline into CorruptImageError."""
    try:
        yield
    except tf.errors.InvalidArgumentError as e:
        found = re.search(re.escape(_UNREADABLE) + r"\] \[(.*)\]", e.message)
        if found is None:
            raise
        raise CorruptImageError(f"image file {found.group(1)!r} is damaged (truncated, empty "
                                "or not a JPEG/PNG): replace or remove it") from None


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Which data to read and how: the `dataset` section of every config.

    Attributes:
      name: a key of `DATASETS`.
      data_dir: TFDS data directory (TFDS datasets) -- required for them.
      path: root of an ImageFolder dataset (name == "imagefolder").
      data_rate: fraction of the training pool used for training, in (0, 1].
      classes: optional subset of original class indices, relabelled 0..k-1 in the
        given order (e.g. a source task on classes 0-4, a downstream task on 5-9).
      image_size: side of the square images the model sees.
      augment: "imagenet" or "cifar" preprocessing (see module docstring).
      stats: normalization constants, a key of `STATS` (default: the dataset's own;
        ImageFolder: "imagenet").
      val_fraction: ImageFolder without a validation folder: per-class tail fraction
        of the training files held out for validation.
      download: allow TFDS to download and prepare the dataset (network!).
    """
    name: str
    # Where the data lives is not part of a run's identity (`identity.neutral`): the
    # dataset's content fingerprint is (see `fingerprint`).
    data_dir: Optional[str] = identity.neutral(None)
    path: Optional[str] = identity.neutral(None)
    data_rate: float = 1.0
    classes: Optional[Tuple[int, ...]] = None
    image_size: int = 224
    augment: str = "imagenet"
    stats: Optional[str] = None
    val_fraction: float = 0.1
    download: bool = identity.neutral(False)

    def __post_init__(self):
        for key in ("data_dir", "path"):  # "~/tensorflow_datasets", "$DATA/imagenet"
            value = getattr(self, key)
            if value:
                object.__setattr__(self, key, os.path.expandvars(os.path.expanduser(value)))
        if self.name not in DATASETS:
            raise ValueError(f"Unknown dataset {self.name!r}; choose one of {sorted(DATASETS)}")
        if not 0.0 < self.data_rate <= 1.0:
            raise ValueError(f"data_rate must be in (0, 1], got {self.data_rate!r}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"Unknown augment {self.augment!r}; choose one of {AUGMENTATIONS}")
        if not isinstance(self.image_size, int) or self.image_size < 32:
            raise ValueError(f"image_size must be an int >= 32, got {self.image_size!r}")
        if self.stats is not None and self.stats not in STATS:
            raise ValueError(f"Unknown stats {self.stats!r}; choose one of {sorted(STATS)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.name == "imagefolder":
            if not self.path:
                raise ValueError("dataset 'imagefolder' needs `path` (the folder holding "
                                 "train/ and test/ class folders)")
        elif not self.data_dir:
            raise ValueError(f"dataset {self.name!r} needs `data_dir` (the TFDS data directory)")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
            if len(set(self.classes)) != len(self.classes) or not self.classes:
                raise ValueError(f"classes must be distinct class indices, got {self.classes}")

    @property
    def label(self):
        """A short human name: the dataset, or the ImageFolder's folder, plus classes."""
        name = self.name if self.name != "imagefolder" else os.path.basename(
            os.path.normpath(self.path))
        if self.classes:
            name += "[" + ",".join(str(c) for c in self.classes) + "]"
        return name

    @property
    def mean_std(self):
        if self.stats:
            return STATS[self.stats]
        layout = DATASETS[self.name]
        return STATS[layout.stats] if layout else STATS["imagenet"]


@dataclasses.dataclass
class Splits:
    """Raw (undecoded-size, unbatched) splits of one dataset.

    Each dataset yields dicts {"image": uint8 HxWx3, "label": int64, "index": int64}
    where `index` is the example's position in the split's canonical order.
    """
    train: tf.data.Dataset
    val: tf.data.Dataset
    test: tf.data.Dataset
    num_train: int
    num_val: int
    num_test: int
    num_classes: int
    class_names: Sequence[str]
    spec: DataSpec
    fingerprint: str = ""   # what the data holds (see `fingerprint`), not where it is

    @property
    def identity(self):
        """The dataset's part of a run identity: result-affecting spec + content."""
        return dataset_identity(self.spec, self.fingerprint)

    def get(self, split):
        if split not in ("train", "val", "test"):
            raise ValueError(f"Unknown split {split!r}; choose train, val or test")
        return getattr(self, split)

    def size(self, split):
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}[split]


def load(spec: DataSpec) -> Splits:
    """Loads the reference splits of `spec` (see module docstring)."""
    if spec.name == "imagefolder":
        splits = _load_image_folder(spec)
    else:
        splits = _load_tfds(spec)
    if spec.classes is not None:
        splits = _select_classes(splits, spec.classes)
    for split in ("train", "val", "test"):
        if splits.size(split) == 0:
            raise errors.ConfigError(
                f"Split {split!r} of dataset {spec.label!r} is empty "
                f"(data_rate={spec.data_rate}, classes={spec.classes})")
    splits.fingerprint = fingerprint(spec)
    return splits


def dataset_identity(spec: DataSpec, content: str) -> dict:
    """A dataset's part of a run identity: its result-affecting settings and content."""
    return {"spec": identity.describe(spec), "content": content}


def fingerprint(spec: DataSpec) -> str:
    """What a dataset holds, independent of where it lives.

    TFDS: the builder's full name (dataset/config/version) and split sizes.
    ImageFolder: sha256 of every image's path relative to the root and its size in
    bytes (a listing, no decoding; a same-size edit of one file goes unnoticed).
    Raises DatasetNotFoundError when the data is not there.
    """
    if spec.name == "imagefolder":
        root = _image_folder_root(spec)
        digest = hashlib.sha256()
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                size = os.stat(os.path.join(dirpath, name)).st_size
                digest.update(f"{rel}/{name}:{size}\n".encode())
        return "imagefolder:" + digest.hexdigest()[:16]
    builder = _tfds_builder(spec)
    sizes = ",".join(f"{name}={info.num_examples}"
                     for name, info in sorted(builder.info.splits.items()))
    return f"tfds:{builder.info.full_name}:{sizes}"


# --------------------------------------------------------------------------- TFDS

def _missing_data_message(builder, spec, manual_dir):
    files = []
    for url, info in sorted(builder.url_infos.items()):
        files.append(f"  {info.filename or os.path.basename(url)} "
                     f"({info.size} bytes, sha256 {info.checksum}) from {url}")
    listing = "\n".join(files) if files else "  (see the TFDS catalog for this dataset)"
    return (
        f"Dataset {spec.name!r} (TFDS {builder.name!r}) is not prepared in data_dir "
        f"{spec.data_dir!r}, and downloading was not requested.\n"
        f"To prepare it offline, place the original archive(s) in {manual_dir}:\n{listing}\n"
        "TFDS checks each file's size and sha256, then builds the dataset without "
        "network access. Alternatively pass download=True (flag --config.dataset."
        "download=True) to let TFDS download it.")


def _tfds_builder(spec):
    layout = DATASETS[spec.name]
    builder = tfds.builder(layout.tfds_name, data_dir=spec.data_dir)
    if builder.is_prepared():
        return builder
    manual_dir = os.path.join(spec.data_dir, "downloads", "manual")
    manual_files = [os.path.join(manual_dir, info.filename or os.path.basename(url))
                    for url, info in builder.url_infos.items()]
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    if manual_files and all(os.path.exists(f) for f in manual_files):
        # TFDS takes manually placed files without touching the network, after
        # checking their size and sha256.
        builder.download_and_prepare(download_config=config)
    elif spec.download:
        builder.download_and_prepare(download_config=config)
    else:
        raise DatasetNotFoundError(_missing_data_message(builder, spec, manual_dir))
    return builder


def _original_index(example, id_prefix):
    """Parses the original file-order index from TFDS's `id` feature ("train_00042")."""
    digits = tf.strings.substr(example["id"], len(id_prefix), -1)
    return tf.strings.to_number(digits, out_type=tf.int64)


def _load_tfds(spec):
    layout = DATASETS[spec.name]
    builder = _tfds_builder(spec)
    read_config = tfds.ReadConfig(shuffle_seed=0, interleave_cycle_length=1)
    train_all = builder.as_dataset(split=layout.train_split, shuffle_files=False,
                                   read_config=read_config)
    test = builder.as_dataset(split=layout.test_split, shuffle_files=False,
                              read_config=read_config)

    def with_index(ds, id_prefix):
        if id_prefix:
            return ds.map(lambda ex: {"image": ex["image"], "label": ex["label"],
                                      "index": _original_index(ex, id_prefix)})
        return ds.enumerate().map(lambda i, ex: {"image": ex["image"], "label": ex["label"],
                                                 "index": i})

    if layout.val_start is not None:
        pool = with_index(train_all, layout.id_prefix)
        num_train = int(layout.val_start * spec.data_rate)
        lo, hi = layout.val_start, layout.val_end
        train = pool.filter(lambda ex: ex["index"] < num_train)
        val = pool.filter(lambda ex: (ex["index"] >= lo) & (ex["index"] < hi))
        num_val = hi - lo
        total = _split_size(builder, layout.train_split)
        if total is None:  # no split metadata (mocked TFDS): count what the filters keep
            num_train, num_val = _count(train), _count(val)
        elif total < hi:
            raise DatasetError(
                f"TFDS {layout.tfds_name!r} split {layout.train_split!r} in "
                f"{spec.data_dir!r} has {total} examples; the reference splits need "
                f"{hi} (validation = examples {lo}-{hi - 1})")
        test = with_index(test, None)
        num_test = _num_examples(builder, layout.test_split, test)
    else:
        total = _num_examples(builder, layout.train_split, train_all)
        num_train = int(total * spec.data_rate)
        train = with_index(train_all, None).take(num_train)
        test = with_index(test, None)
        val = test
        num_test = num_val = _num_examples(builder, layout.test_split, test)
    if layout.cache:
        train, val, test = train.cache(), val.cache(), test.cache()
    names = builder.info.features["label"].names
    return Splits(train, val, test, num_train, num_val, num_test, layout.num_classes,
                  list(names), spec)


def _split_size(builder, split):
    """The split's size from TFDS's metadata; None when there is none (mocked TFDS)."""
    try:
        return builder.info.splits[split].num_examples
    except KeyError:
        return None


def _count(ds):
    with unreadable_images_named():
        return int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1).numpy())


def _num_examples(builder, split, ds):
    size = _split_size(builder, split)
    return _count(ds) if size is None else size


# -------------------------------------------------------------------- ImageFolder

def _image_folder_root(spec):
    root = os.path.abspath(spec.path)
    if not os.path.isdir(os.path.join(root, "train")) or not os.path.isdir(
            os.path.join(root, "test")):
        raise DatasetNotFoundError(
            f"ImageFolder dataset at {root!r} needs train/<class>/<images> and "
            f"test/<class>/<images> folders; found: "
            f"{sorted(os.listdir(root)) if os.path.isdir(root) else 'no such directory'}")
    return root


def _load_image_folder(spec):
    root = _image_folder_root(spec)
    builder = tfds.ImageFolder(root)
    names = builder.info.features["label"].names
    split_names = set(builder.info.splits.keys())
    val_name = next((s for s in ("val", "validation") if s in split_names), None)

    def files_of(split):
        # (path, label) in tfds.ImageFolder's order: label folders sorted, files sorted.
        examples = builder._split_examples[split]  # pylint: disable=protected-access
        return [(e.image_path, names.index(e.label)) for e in examples]

    train_files, val_files = [], []
    for label in range(len(names)):
        files = [f for f in files_of("train") if f[1] == label]
        if val_name is None:
            num_val = int(round(len(files) * spec.val_fraction))
            files, held_out = files[:len(files) - num_val], files[len(files) - num_val:]
            val_files += held_out
        train_files += files[:int(len(files) * spec.data_rate)]
    if val_name is not None:
        val_files = files_of(val_name)
    test_files = files_of("test")

    def dataset(files):
        paths = [p for p, _ in files]
        labels = [l for _, l in files]
        ds = tf.data.Dataset.from_tensor_slices(
            (tf.constant(paths, tf.string), tf.constant(labels, tf.int64)))
        ds = ds.enumerate().map(
            lambda i, pl: {"image": _read_image(pl[0]), "label": pl[1], "index": i},
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.cache()

    return Splits(dataset(train_files), dataset(val_files), dataset(test_files),
                  len(train_files), len(val_files), len(test_files), len(names), names, spec)


def _select_classes(splits, classes):
    lookup = tf.constant([classes.index(c) if c in classes else -1
                          for c in range(splits.num_classes)], tf.int64)
    bad = [c for c in classes if not 0 <= c < splits.num_classes]
    if bad:
        raise errors.ConfigError(f"classes {bad} out of range for the {splits.num_classes} "
                                 f"classes of {splits.spec.label!r}")

    def select(ds):
        ds = ds.filter(lambda ex: tf.gather(lookup, ex["label"]) >= 0)
        return ds.map(lambda ex: dict(ex, label=tf.gather(lookup, ex["label"])))

    train, val, test = (select(splits.train).cache(), select(splits.val).cache(),
                        select(splits.test).cache())
    return Splits(train, val, test, _count(train), _count(val), _count(test), len(classes),
                  [splits.class_names[c] for c in classes], splits.spec, splits.fingerprint)


# ------------------------------------------------------------------ preprocessing

def _seed_pair(*parts):
    """Stateless-RNG seed from Python ints (stable across processes)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return (int.from_bytes(digest[:4], "little") & 0x7FFFFFFF,
            int.from_bytes(digest[4:8], "little") & 0x7FFFFFFF)


def _example_seed(base, index, salt):
    return tf.stack([tf.constant(base[0], tf.int64) + salt,
                     tf.constant(base[1], tf.int64) * 1_000_003 + index])


def _random_resized_crop(image, size, seed):
    """torchvision's RandomResizedCrop(size): scale (0.08, 1), ratio (3/4, 4/3)."""
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, crop_size)
    return tf.image.resize(image, (size, size), method="bilinear", antialias=True)


def _resize_center_crop(image, size):
    """torchvision's Resize(size * 256 / 224) + CenterCrop(size)."""
    resize = int(round(size * 256 / 224))
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, new_shape, method="bilinear", antialias=True)
    top = (new_shape[0] - size) // 2
    left = (new_shape[1] - size) // 2
    return tf.slice(image, [top, left, 0], [size, size, 3])


def _pad_random_crop(image, size, seed):
    """torchvision's RandomCrop(size, padding=4) (zero padding)."""
    image = tf.image.resize_with_crop_or_pad(image, size, size)
    image = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
    return tf.image.stateless_random_crop(image, (size, size, 3), seed=seed)


def _augment_train(image, spec, seed):
    image = tf.cast(image, tf.float32) / 255.0
    if spec.augment == "imagenet":
        image = _random_resized_crop(image, spec.image_size, seed)
    else:
        image = _pad_random_crop(image, spec.image_size, seed)
    image = tf.image.stateless_random_flip_left_right(image, seed=seed + [0, 1])
    return tf.clip_by_value(image, 0.0, 1.0)


def _preprocess_eval(image, spec):
    image = tf.cast(image, tf.float32) / 255.0
    if spec.augment == "imagenet":
        image = _resize_center_crop(image, spec.image_size)
    elif image.shape[0] != spec.image_size or image.shape[1] != spec.image_size:
        image = tf.image.resize_with_crop_or_pad(image, spec.image_size, spec.image_size)
    return tf.clip_by_value(image, 0.0, 1.0)


def _output(image, ex, with_noise, noise_seed):
    out = {"image": image, "label": ex["label"], "index": ex["index"]}
    if with_noise:
        out["noise"] = tf.random.stateless_uniform(
            tf.shape(image), _example_seed(noise_seed, ex["index"], 7), -1.0, 1.0)
    return out


def train_batches(splits: Splits, batch_size: int, seed: int, epoch: int,
                  skip_batches: int = 0, with_noise: bool = False,
                  shuffle_buffer: Optional[int] = None) -> tf.data.Dataset:
    """One epoch of augmented, shuffled training batches (the last one may be short).

    Deterministic in (seed, epoch): the same batches come out whatever the replica
    count, and `skip_batches` resumes an epoch mid-way without changing what follows.
    `with_noise` adds a per-example "noise" tensor in [-1, 1] for PGD's random start.
    """
    _check_batch(batch_size)
    spec = splits.spec
    order_seed = _seed_pair("order", seed, epoch)
    aug_seed = _seed_pair("augment", seed, epoch)
    noise_seed = _seed_pair("noise", seed, epoch)
    buffer = shuffle_buffer or max(splits.num_train, 1)
    ds = splits.train.shuffle(buffer, seed=order_seed[0], reshuffle_each_iteration=False)
    if skip_batches:
        ds = ds.skip(skip_batches * batch_size)

    def prepare(ex):
        image = _augment_train(ex["image"], spec, _example_seed(aug_seed, ex["index"], 0))
        return _output(image, ex, with_noise, noise_seed)

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def eval_batches(splits: Splits, split: str, batch_size: int, seed: int = 0,
                 with_noise: bool = False) -> tf.data.Dataset:
    """Preprocessed evaluation batches of `split` in a fixed order."""
    _check_batch(batch_size)
    spec = splits.spec
    noise_seed = _seed_pair("eval-noise", seed, split)

    def prepare(ex):
        return _output(_preprocess_eval(ex["image"], spec), ex, with_noise, noise_seed)

    ds = splits.get(split).map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
                               deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def num_batches(num_examples, batch_size):
    return -(-num_examples // batch_size)


def _check_batch(batch_size):
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
