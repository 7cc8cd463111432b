"""Input pipelines at paper scale: the reference's splits, read by random access.

Datasets: TFDS's `cifar10`, `cifar100`, `svhn_cropped` and `imagenet2012` from a
user-given `data_dir` (prepared in TFDS's ArrayRecord format), or an ImageFolder
directory (`<root>/<split>/<class>/<image>`: `train/` and `test/`, optionally `val/` or
`validation/`; `.jpg`, `.jpeg`, `.png`). Nothing is downloaded unless `download=True`;
missing data is a `DatasetNotFoundError` naming the files to provide and where (the
README's "Preparing data" says how for each dataset).

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
  round(n * val_fraction) of each class's files sorted by name; training = the first
  int(n * data_rate) of each class's remaining (sorted) files; test = the `test` folder.

How examples are read, and why (memory independent of the dataset's size):

* A split is a table of positions into stored examples -- an ImageFolder's sorted file
  paths, or the records of a TFDS ArrayRecord split. Only positions (int64) and, for
  ImageFolder, the file paths are held in memory; never images, decoded or encoded.
* `pipeline.py` orders an epoch by a stateless permutation of positions (an exact
  global shuffle in O(1) memory), gives every replica a contiguous share of every global
  batch and every worker only its replicas' shares, and only then reads and decodes
  (`Split.read`, `preprocess.py`).
* Trade-offs: reads are random rather than sequential (fine on SSDs and network
  filesystems, slow on spinning disks); a TFDS dataset must be stored as ArrayRecord,
  which this module asks TFDS for when it prepares one (a TFRecord-only preparation is
  refused with the conversion command); ArrayRecord records are fetched through TFDS's
  Python data source, 64 per call, so a worker's reading takes one Python thread.

Preprocessing ("augment", see `preprocess.py`): `imagenet` = torchvision's
RandomResizedCrop(size) + flip for training, Resize(size * 256 / 224) + CenterCrop(size)
for evaluation; `cifar` = RandomCrop(size, padding=4) + flip for training, identity for
evaluation. Pixels are float32 in [0, 1]; normalization lives in the model
(`models.Normalization`), with each dataset's constants in `STATS`.

Determinism (`pipeline.py`): the order, every random augmentation and PGD's random
start are keyed by (seed, epoch, example index): identical across runs, replica counts
and workers, and after resuming mid-epoch.
"""
import contextlib
import dataclasses
import hashlib
import os
import re
from typing import Optional, Sequence, Tuple

import numpy as np

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import download_manager

from dwlt_tf import checks, errors, identity, preprocess
from dwlt_tf.errors import ConfigError

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
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


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
    # Files TFDS reads from `<data_dir>/downloads/manual` (none: the checksummed URLs').
    manual_files: Tuple[str, ...] = ()


DATASETS = {
    "cifar10": _TfdsLayout("cifar10", 10, "cifar10", "train", "test", 45000, 50000, "train_"),
    "cifar100": _TfdsLayout("cifar100", 100, "cifar100", "train", "test", 45000, 50000,
                            "train_"),
    "svhn": _TfdsLayout("svhn_cropped", 10, "svhn", "train", "test", 68257, 73257, "train_"),
    "imagenet": _TfdsLayout("imagenet2012", 1000, "imagenet", "train", "validation",
                            manual_files=("ILSVRC2012_img_train.tar",
                                          "ILSVRC2012_img_val.tar")),
    "imagefolder": None,  # described by `DataSpec.path`
}


class DatasetError(errors.UserError):
    """The data on disk cannot serve the requested dataset (the message says why)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset is not available locally (and downloading was not requested)."""


class CorruptImageError(DatasetError):
    """An image file is damaged; the message names it."""


@contextlib.contextmanager
def unreadable_images_named():
    """Turns the failure of a damaged image inside a pipeline into CorruptImageError."""
    try:
        yield
    except tf.errors.InvalidArgumentError as e:
        found = re.search(re.escape(preprocess.UNREADABLE) + r"\] \[(.*)\]", e.message)
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
      test_examples: 0 (default) tests on the whole test split; N tests on N of its
        examples evenly spaced over it (`evenly_spaced`; after `classes`, so a
        class-sorted split keeps every class in proportion) -- a cheaper test split with
        wider confidence intervals, the same examples for every run of this spec.
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
    test_examples: int = 0
    download: bool = identity.neutral(False)

    def __post_init__(self):
        checks.choice("dataset.name", self.name, sorted(DATASETS))
        for key in ("data_dir", "path"):  # "~/tensorflow_datasets", "$DATA/imagenet"
            value = checks.optional_str(f"dataset.{key}", getattr(self, key))
            if value:
                value = os.path.expandvars(os.path.expanduser(value))
            object.__setattr__(self, key, value)
        checks.number("dataset.data_rate", self.data_rate, 0.0, 1.0, low_open=True)
        checks.choice("dataset.augment", self.augment, AUGMENTATIONS)
        checks.integer("dataset.image_size", self.image_size, 32)
        stats = checks.optional_str("dataset.stats", self.stats)
        if stats is not None:
            checks.choice("dataset.stats", stats, sorted(STATS))
        object.__setattr__(self, "stats", stats)
        checks.number("dataset.val_fraction", self.val_fraction, 0.0, 1.0, low_open=True,
                      high_open=True)
        checks.non_negative_int("dataset.test_examples", self.test_examples)
        checks.boolean("dataset.download", self.download)
        if self.name == "imagefolder":
            if not self.path:
                raise ConfigError("dataset.path: dataset 'imagefolder' needs `path` (the "
                                  "folder holding train/ and test/ class folders)")
            if self.data_dir:
                checks.fail("dataset.data_dir", self.data_dir, "an ImageFolder dataset is "
                            "read from `path`; data_dir is for TFDS datasets")
        else:
            if not self.data_dir:
                raise ConfigError(f"dataset.data_dir: dataset {self.name!r} needs `data_dir` "
                                  "(the TFDS data directory)")
            if self.path:
                checks.fail("dataset.path", self.path, f"TFDS dataset {self.name!r} is read "
                            "from data_dir; path is for ImageFolder datasets")
        if self.classes is not None:
            classes = checks.int_tuple("dataset.classes", self.classes, low=0, distinct=True)
            if not classes:
                checks.fail("dataset.classes", self.classes, "give class indices, or None "
                            "for every class")
            object.__setattr__(self, "classes", classes)

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


# ------------------------------------------------------------------ stored examples

class _Files:
    """An ImageFolder split's files (sorted by class, then name), read by position."""

    def __init__(self, paths, labels, name):
        self.paths = list(paths)
        self.labels = np.asarray(labels, np.int64)
        self.name = name
        self._tensors = None

    def __len__(self):
        return len(self.paths)

    def read(self, items):
        """Adds "encoded", "label" and "name" (the path) to items {"index", "position"}."""
        if self._tensors is None:  # built once: every epoch's pipeline reads the same table
            self._tensors = (tf.constant(self.paths or [""], tf.string),
                             tf.constant(self.labels if len(self.labels) else [0], tf.int64))
        paths, labels = self._tensors

        def fetch(item):
            path = tf.gather(paths, item["position"])
            return dict(item, encoded=tf.io.read_file(path), name=path,
                        label=tf.gather(labels, item["position"]))
        return items.map(fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class _Records:
    """A TFDS split stored as ArrayRecord, read by position through TFDS's data source."""
    PER_CALL = 64  # records per Python call: amortizes the call, keeps memory bounded

    def __init__(self, builder, split):
        try:
            self.source = builder.as_data_source(
                split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
        except NotImplementedError:
            stored = getattr(builder.info.file_format, "value", builder.info.file_format)
            raise DatasetError(
                f"TFDS {builder.name!r} in {builder.data_dir} is stored only as "
                f"{stored}; dwlt_tf reads TFDS datasets by random access "
                "(exact global shuffle, disjoint reads per worker), which needs ArrayRecord. "
                "Convert it (pip install apache-beam; tfds convert_format "
                f"--dataset_version_dir={builder.data_dir} --out_file_format=array_record) or "
                "prepare it again into a new data_dir (dwlt_tf prepares ArrayRecord).") from None
        self.name = f"{builder.name}/{split}"
        self._labels = None

    def __len__(self):
        return len(self.source)

    def _fetch(self, positions):
        return tf.constant(self.source.__getitems__(positions.numpy().tolist()), tf.string)

    def read(self, items):
        """Adds "encoded", "label" and "name" (`<dataset>/<split>[<position>]`) to items."""
        name = self.name

        def fetch(batch):
            serialized = tf.py_function(self._fetch, [batch["position"]], tf.string)
            serialized.set_shape([None])
            parsed = tf.io.parse_example(serialized, {
                "image": tf.io.FixedLenFeature([], tf.string),
                "label": tf.io.FixedLenFeature([], tf.int64)})
            names = tf.strings.join([name, "[", tf.strings.as_string(batch["position"]), "]"])
            return dict(batch, encoded=parsed["image"], label=parsed["label"], name=names)
        return items.batch(self.PER_CALL).map(
            fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()

    def stored_labels(self):
        """Every record's label, in storage order (read once, then kept)."""
        if self._labels is None:
            self._labels = self.column("label", tf.int64)
        return self._labels

    def column(self, key, dtype):
        """One feature of every record, in storage order (a pass over the split)."""
        values = []
        for start in range(0, len(self), 4096):
            records = self.source.__getitems__(list(range(start, min(start + 4096, len(self)))))
            parsed = tf.io.parse_example(tf.constant(records, tf.string),
                                         {key: tf.io.FixedLenFeature([], dtype)})
            values.append(parsed[key].numpy())
        return np.concatenate(values) if values else np.zeros([0])


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """The examples of one split: positions into stored examples (`table`) in the split's
    canonical order, and an optional relabelling (class subsets)."""
    table: object                   # _Files or _Records
    positions: np.ndarray           # int64: split index -> table position
    relabel: Optional[Tuple[int, ...]] = None  # original label -> label (or -1)

    def __len__(self):
        return len(self.positions)

    def read(self, indices: tf.data.Dataset) -> tf.data.Dataset:
        """Examples {"index", "encoded", "label", "name"} for split indices (int64)."""
        positions = tf.constant(self.positions if len(self.positions) else [0], tf.int64)
        items = indices.map(lambda i: {"index": i, "position": tf.gather(positions, i)})
        examples = self.table.read(items)
        if self.relabel is not None:
            lookup = tf.constant(self.relabel, tf.int64)
            examples = examples.map(lambda ex: dict(ex, label=tf.gather(lookup, ex["label"])))
        return examples


@dataclasses.dataclass
class Splits:
    """The train, validation and test splits of one dataset spec."""
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: Sequence[str]
    spec: DataSpec
    fingerprint: str = ""   # what the data holds (see `fingerprint`), not where it is

    @property
    def num_train(self):
        return len(self.train)

    @property
    def num_val(self):
        return len(self.val)

    @property
    def num_test(self):
        return len(self.test)

    @property
    def identity(self):
        """The dataset's part of a run identity: result-affecting spec + content."""
        return dataset_identity(self.spec, self.fingerprint)

    def get(self, split) -> Split:
        if split not in ("train", "val", "test"):
            raise ValueError(f"Unknown split {split!r}; choose train, val or test")
        return getattr(self, split)

    def size(self, split):
        return len(self.get(split))

    def example_order(self, split, count=None, indices=None) -> str:
        """A digest of which stored example sits at each index of `split` (its first
        `count` examples, or those at `indices`; default: all) and of its labelling -- not
        of where the data lives. Two models' per-example records (`records.py`) can be
        compared example by example only when their digests agree."""
        examples = self.get(split)
        if indices is None:
            indices = np.arange(len(examples) if count is None else min(count, len(examples)))
        positions = examples.positions[np.asarray(indices, np.int64)]
        digest = hashlib.sha256()
        table = examples.table
        if isinstance(table, _Files):  # ImageFolder: paths relative to the dataset's root
            root = os.path.dirname(table.name)
            for position in positions:
                digest.update(os.path.relpath(table.paths[position], root).encode() + b"\n")
        else:                          # TFDS: the split's name and record positions
            digest.update(table.name.encode() + b"\n")
            digest.update(np.asarray(positions, np.int64).tobytes())
        digest.update(repr(examples.relabel).encode())
        return f"{len(positions)}:{digest.hexdigest()[:16]}"


def load(spec: DataSpec) -> Splits:
    """The reference splits of `spec` (see module docstring); reads no image."""
    splits = _load_image_folder(spec) if spec.name == "imagefolder" else _load_tfds(spec)
    if spec.classes is not None:
        splits = _select_classes(splits, spec.classes)
    if spec.test_examples:
        splits.test = _test_subset(splits.test, spec)
    for split in ("train", "val", "test"):
        if splits.size(split) == 0:
            raise errors.ConfigError(
                f"Split {split!r} of dataset {spec.label!r} is empty "
                f"(data_rate={spec.data_rate}, classes={spec.classes})")
    splits.fingerprint = fingerprint(spec)
    return splits


def evenly_spaced(wanted, size):
    """`wanted` distinct indices of range(size) spread evenly over it, ascending (all of
    them when wanted >= size)."""
    wanted = min(wanted, size)
    return np.arange(wanted, dtype=np.int64) * size // wanted


def _test_subset(test: Split, spec: DataSpec) -> Split:
    if spec.test_examples > len(test):
        checks.fail("dataset.test_examples", spec.test_examples,
                    f"the test split of {spec.label!r} holds {len(test)} examples")
    return Split(test.table, test.positions[evenly_spaced(spec.test_examples, len(test))],
                 test.relabel)


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
        for split, class_name, path in _image_folder_files(root):
            size = os.stat(path).st_size
            digest.update(f"{split}/{class_name}/{os.path.basename(path)}:{size}\n".encode())
        return "imagefolder:" + digest.hexdigest()[:16]
    builder = _tfds_builder(spec)
    sizes = ",".join(f"{name}={info.num_examples}"
                     for name, info in sorted(builder.info.splits.items()))
    return f"tfds:{builder.info.full_name}:{sizes}"


# --------------------------------------------------------------------------- TFDS

def _manual_dir(spec):
    return os.path.join(spec.data_dir, "downloads", "manual")


def _manual_files(builder, layout):
    """(file name, description) of what TFDS reads from the manual directory."""
    if layout.manual_files:
        return [(name, "from image-net.org (registration needed)")
                for name in layout.manual_files]
    return [(info.filename or os.path.basename(url),
             f"{info.size} bytes, sha256 {info.checksum}, from {url}")
            for url, info in sorted(builder.url_infos.items())]


def _missing_data_message(builder, spec, files):
    # One line: the trainers print it as `<binary>: error: <message>`.
    listing = "; ".join(f"{name} ({about})" for name, about in files)
    return (
        f"Dataset {spec.name!r} (TFDS {builder.name!r}) is not prepared in data_dir "
        f"{spec.data_dir!r} and downloading was not requested: to prepare it offline, place "
        f"{listing} in {_manual_dir(spec)} (TFDS checks sizes and sha256s, then builds it "
        "without network access; README 'Preparing data'), or set dataset.download=True "
        "to let TFDS download it")


def _tfds_builder(spec):
    """The TFDS builder of `spec`, prepared (as ArrayRecord) from manual files if needed."""
    layout = DATASETS[spec.name]
    if os.path.exists(spec.data_dir) and not os.path.isdir(spec.data_dir):
        raise DatasetNotFoundError(f"data_dir {spec.data_dir!r} is a file, not the TFDS data "
                                   "folder")
    builder = tfds.builder(layout.tfds_name, data_dir=spec.data_dir)
    if builder.is_prepared():  # (in whichever format: `_Records` checks it can read it)
        return builder
    files = _manual_files(builder, layout)
    present = files and all(os.path.exists(os.path.join(_manual_dir(spec), name))
                            for name, _ in files)
    if not (present or spec.download):
        raise DatasetNotFoundError(_missing_data_message(builder, spec, files))
    # With the manual files present TFDS takes them without touching the network,
    # after checking the size and sha256 of checksummed ones.
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=_manual_dir(spec)),
            file_format="array_record")
    except download_manager.NonMatchingChecksumError as e:
        raise DatasetError(
            f"An archive in {_manual_dir(spec)} for {spec.name!r} does not match the size and "
            "sha256 TFDS expects (a partial download or another version?): "
            f"{' '.join(str(e).split())[:300]}; expected: "
            + "; ".join(f"{name} ({about})" for name, about in files)) from None
    return builder


def _original_indices(table, prefix):
    """The original (file-order) index of every record, from TFDS's `id` ("train_00042")."""
    ids = table.column("id", tf.string)
    return np.array([int(value[len(prefix):]) for value in ids], np.int64)


def _load_tfds(spec):
    layout = DATASETS[spec.name]
    builder = _tfds_builder(spec)
    train_table = _Records(builder, layout.train_split)
    test_table = _Records(builder, layout.test_split)
    test = Split(test_table, np.arange(len(test_table), dtype=np.int64))
    if layout.val_start is not None:
        lo, hi = layout.val_start, layout.val_end
        if len(train_table) < hi:
            raise DatasetError(
                f"TFDS {layout.tfds_name!r} split {layout.train_split!r} in "
                f"{spec.data_dir!r} has {len(train_table)} examples; the reference splits "
                f"need {hi} (validation = examples {lo}-{hi - 1})")
        original = _original_indices(train_table, layout.id_prefix)
        by_original = np.argsort(original, kind="stable")  # table positions in file order
        if not np.array_equal(original[by_original], np.arange(len(original))):
            raise DatasetError(f"TFDS {layout.tfds_name!r} in {spec.data_dir!r}: the `id` "
                               "features are not the original indices 0..N-1")
        train = Split(train_table, by_original[:int(lo * spec.data_rate)])
        val = Split(train_table, by_original[lo:hi])
    else:
        train = Split(train_table,
                      np.arange(int(len(train_table) * spec.data_rate), dtype=np.int64))
        val = test
    names = builder.info.features["label"].names
    return Splits(train, val, test, layout.num_classes, list(names), spec)


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


def _image_folder_files(root):
    """(split, class, path) of every image, splits and classes and files sorted by name."""
    for split in sorted(os.listdir(root)):
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir) or split.startswith("."):
            continue
        for class_name in sorted(os.listdir(split_dir)):
            class_dir = os.path.join(split_dir, class_name)
            if not os.path.isdir(class_dir) or class_name.startswith("."):
                continue
            for name in sorted(os.listdir(class_dir)):
                if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                    yield split, class_name, os.path.join(class_dir, name)


def _load_image_folder(spec):
    root = _image_folder_root(spec)
    by_split = {}
    for split, class_name, path in _image_folder_files(root):
        by_split.setdefault(split, {}).setdefault(class_name, []).append(path)
    names = sorted(by_split.get("train", {}))
    val_name = next((s for s in ("val", "validation") if s in by_split), None)
    for split in ["test"] + ([val_name] if val_name else []):
        unknown = sorted(set(by_split.get(split, {})) - set(names))
        if unknown:
            raise DatasetError(f"ImageFolder {root!r}: classes {unknown} of {split}/ have no "
                               "train/ folder")

    def table(split):
        files = [(path, label) for label, name in enumerate(names)
                 for path in by_split.get(split, {}).get(name, [])]
        return _Files([p for p, _ in files], [label for _, label in files], f"{root}/{split}")

    train_table = table("train")
    train_positions, val_positions, start = [], [], 0
    for name in names:
        count = len(by_split["train"][name])
        held_out = 0 if val_name else int(round(count * spec.val_fraction))
        kept = count - held_out
        train_positions += range(start, start + int(kept * spec.data_rate))
        val_positions += range(start + kept, start + count)
        start += count
    train = Split(train_table, np.asarray(train_positions, np.int64))
    if val_name:
        val_table = table(val_name)
        val = Split(val_table, np.arange(len(val_table), dtype=np.int64))
    else:
        val = Split(train_table, np.asarray(val_positions, np.int64))
    test_table = table("test")
    test = Split(test_table, np.arange(len(test_table), dtype=np.int64))
    return Splits(train, val, test, len(names), names, spec)


def _labels(table):
    """The label of every stored example of a table (a pass over TFDS records, once)."""
    return table.labels if isinstance(table, _Files) else table.stored_labels()


def check_classes(spec: DataSpec):
    """Raises ConfigError when `spec.classes` names a class the dataset lacks; reads only
    a listing (ImageFolder) or the dataset's layout (TFDS), so a study checks it first."""
    if spec.classes is None:
        return
    if spec.name == "imagefolder":
        train = os.path.join(_image_folder_root(spec), "train")
        count = sum(1 for name in os.listdir(train)
                    if not name.startswith(".") and os.path.isdir(os.path.join(train, name)))
    else:
        count = DATASETS[spec.name].num_classes
    _check_classes(spec.classes, count, spec.label)


def _check_classes(classes, num_classes, label):
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        checks.fail("dataset.classes", tuple(classes), f"classes {bad} out of range for the "
                    f"{num_classes} classes of {label!r}")


def _select_classes(splits, classes):
    _check_classes(classes, splits.num_classes, splits.spec.label)
    relabel = tuple(classes.index(c) if c in classes else -1 for c in range(splits.num_classes))

    def select(split):
        keep = np.isin(_labels(split.table)[split.positions], classes)
        return Split(split.table, split.positions[keep], relabel)
    return Splits(select(splits.train), select(splits.val), select(splits.test), len(classes),
                  [splits.class_names[c] for c in classes], splits.spec)
