"""Original-format dataset archives made from given images, for offline TFDS preparation.

Each writer produces exactly the layout the TFDS builder reads (checked against
tensorflow_datasets 4.9.10's `cifar.py`, `svhn_cropped` and `imagenet2012` builders):

* `cifar10_binary`: `cifar-10-binary.tar.gz` holding `cifar-10-batches-bin/
  data_batch_{1..5}.bin`, `test_batch.bin` (records of 1 label byte + 3072 pixel bytes,
  red, green and blue planes of 32x32) and `batches.meta.txt` (class names).
* `svhn_mat`: `{train,test,extra}_32x32.mat` with X uint8 [32, 32, 3, N] and y [N, 1]
  in 1..10 (digit 0 is stored as 10).
* `imagenet_tars`: `ILSVRC2012_img_train.tar` holding one `<synset>.tar` per class of
  `<synset>_<k>.JPEG` files, and `ILSVRC2012_img_val.tar` of `ILSVRC2012_val_<k>.JPEG`
  (TFDS labels those with the first lines of its own validation_labels.txt, in name
  order).

`register_checksums` tells TFDS, for the duration of a `with` block only, the size and
sha256 of archives it would otherwise expect to download (tests never change the
installed package's checksum files).
"""
import contextlib
import io
import os
import tarfile
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds

from dwlt_tf import convert

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"


def _add_bytes(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(payload))


def _cifar_records(images, labels):
    images = np.asarray(images, np.uint8)
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    return b"".join(bytes([int(label)]) + plane.tobytes() for label, plane in zip(labels, planes))


def cifar10_binary(path, train_images, train_labels, test_images, test_labels):
    """Writes `cifar-10-binary.tar.gz`; training images are spread over the five batch
    files in order, so TFDS's `id` train_<k> is the k-th image given."""
    chunks = np.array_split(np.arange(len(train_images)), 5)
    with tarfile.open(path, "w:gz") as tar:
        for number, chunk in enumerate(chunks, start=1):
            _add_bytes(tar, f"cifar-10-batches-bin/data_batch_{number}.bin",
                       _cifar_records(np.asarray(train_images)[chunk],
                                      np.asarray(train_labels)[chunk]))
        _add_bytes(tar, "cifar-10-batches-bin/test_batch.bin",
                   _cifar_records(test_images, test_labels))
        _add_bytes(tar, "cifar-10-batches-bin/batches.meta.txt",
                   ("\n".join(CIFAR10_NAMES) + "\n").encode())
    return path


def svhn_mat(path, images, digits):
    """Writes one SVHN `*_32x32.mat` (digits 0-9; stored as 1-10 like the original)."""
    from scipy import io as scipy_io  # pylint: disable=import-outside-toplevel
    digits = np.asarray(digits)
    scipy_io.savemat(path, {"X": np.asarray(images, np.uint8).transpose(1, 2, 3, 0),
                            "y": np.where(digits == 0, 10, digits).reshape(-1, 1)})
    return path


def imagenet_tars(manual_dir, train, val):
    """Writes ILSVRC2012_img_train.tar ({synset: [jpeg bytes]}) and ILSVRC2012_img_val.tar
    ([jpeg bytes]); returns the validation file names in the order given."""
    os.makedirs(manual_dir, exist_ok=True)
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"), "w") as outer:
        for synset, jpegs in sorted(train.items()):
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as inner:
                for k, jpeg in enumerate(jpegs):
                    _add_bytes(inner, f"{synset}_{k}.JPEG", jpeg)
            _add_bytes(outer, f"{synset}.tar", buffer.getvalue())
    names = [f"ILSVRC2012_val_{k + 1:08d}.JPEG" for k in range(len(val))]
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"), "w") as tar:
        for name, jpeg in zip(names, val):
            _add_bytes(tar, name, jpeg)
    return names


def imagenet_synsets(count):
    """The first `count` ImageNet synsets in TFDS's label order (label k = synset k)."""
    with open(tfds.core.tfds_path("datasets/imagenet2012/labels.txt")) as f:
        return f.read().split()[:count]


@contextlib.contextmanager
def register_checksums(tfds_name, files):
    """Within the block, TFDS's `tfds_name` expects {url: local archive} (size, sha256)."""
    infos = {url: tfds.core.download.checksums.UrlInfo(
        size=os.path.getsize(path), checksum=convert.file_sha256(path),
        filename=os.path.basename(path))
        for url, path in files.items()}
    with mock.patch.object(tfds.builder_cls(tfds_name), "url_infos", infos):
        yield
