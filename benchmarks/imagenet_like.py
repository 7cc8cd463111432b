r"""Generated data at the paper's real sizes, from the bundled CIFAR-10 JPEGs.

  python benchmarks/imagenet_like.py --root=benchmarks/results/data --num_images=20000
  python benchmarks/imagenet_like.py --root=benchmarks/results/data --cifar10

ImageNet-like (`--num_images=N`): each bundled training image upscaled (bicubic) to a
size drawn around ImageNet's typical 400x350 (width 300-500, height 250-450), with
sensor-like noise so the JPEGs (quality 90) weigh what photos do, spread over 100
synsets; plus N/10 validation images. Written twice, as the inputs users have:
`<root>/imagenet_like_<N>/folder/{train,test}/<synset>/*.JPEG` (ImageFolder) and
`<root>/imagenet_like_<N>/tfds/downloads/manual/ILSVRC2012_img_{train,val}.tar`, from
which TFDS's own `imagenet2012` builder prepares the dataset (ArrayRecord), offline.

CIFAR-10 (`--cifar10`): a `cifar-10-binary.tar.gz` of the real archive's size (50,000
training and 10,000 test images, the bundled ones repeated in order) in
`<root>/cifar10_full/downloads/manual`, for the reference splits (validation =
examples 45000-49999). Its checksum is not the real archive's: `prepare_cifar10`
registers it with TFDS for the preparation only.

Everything is generated once and reused (`benchmarks/results/` is not committed).
"""
import io
import json
import multiprocessing
import os
import sys
import time

import numpy as np
from absl import app, flags
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
import archives  # noqa: E402  (tests/archives.py: original-format archive writers)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = os.path.join(REPO, "data", "cifar10_jpeg_small")
FLAGS = flags.FLAGS
DEFAULT_ROOT = os.path.join(REPO, "benchmarks", "results", "data")


def _bundled(split):
    root = os.path.join(BUNDLED, split)
    return [os.path.join(root, c, f) for c in sorted(os.listdir(root))
            for f in sorted(os.listdir(os.path.join(root, c)))]


def _photo_like(args):
    """One ImageNet-sized JPEG from a bundled image (seeded by its number)."""
    source, number = args
    rng = np.random.default_rng(number)
    size = (int(rng.integers(300, 501)), int(rng.integers(250, 451)))
    image = np.asarray(Image.open(source).convert("RGB").resize(size, Image.BICUBIC),
                       np.float32)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def imagenet_like(root, num_images, num_classes=100):
    """Generates (once) the ImageFolder and the ImageNet tars of `num_images` training
    images; returns the directory holding `folder/` and `tfds/`."""
    out = os.path.join(root, f"imagenet_like_{num_images}")
    done = os.path.join(out, "done.json")
    if os.path.exists(done):
        return out
    started = time.time()
    synsets = archives.imagenet_synsets(num_classes)
    sources = _bundled("train")
    jobs = [(sources[k % len(sources)], k) for k in range(num_images)]
    val_sources = _bundled("test")
    val_jobs = [(val_sources[k % len(val_sources)], 10 ** 7 + k)
                for k in range(num_images // 10)]
    with multiprocessing.Pool() as pool:
        train = pool.map(_photo_like, jobs, chunksize=64)
        val = pool.map(_photo_like, val_jobs, chunksize=64)
    by_synset = {s: [] for s in synsets}
    for k, jpeg in enumerate(train):
        by_synset[synsets[k % num_classes]].append(jpeg)
    for split, groups in (("train", by_synset),
                          ("test", {s: val[i::num_classes] for i, s in enumerate(synsets)})):
        for synset, jpegs in groups.items():
            folder = os.path.join(out, "folder", split, synset)
            os.makedirs(folder, exist_ok=True)
            for k, jpeg in enumerate(jpegs):
                with open(os.path.join(folder, f"{synset}_{k}.JPEG"), "wb") as f:
                    f.write(jpeg)
    archives.imagenet_tars(os.path.join(out, "tfds", "downloads", "manual"), by_synset, val)
    sizes = [len(j) for j in train]
    with open(done, "w") as f:
        json.dump({"train": num_images, "val": len(val), "mean_jpeg_bytes": float(np.mean(sizes)),
                   "seconds": time.time() - started}, f)
    return out


def cifar10_full(root):
    """Generates (once) a full-size cifar-10-binary.tar.gz; returns (data_dir, archive)."""
    data_dir = os.path.join(root, "cifar10_full")
    manual = os.path.join(data_dir, "downloads", "manual")
    archive = os.path.join(manual, "cifar-10-binary.tar.gz")
    if not os.path.exists(archive):
        os.makedirs(manual, exist_ok=True)

        def load(split, count):
            paths = _bundled(split)
            images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
            labels = np.array([sorted(os.listdir(os.path.join(BUNDLED, split))).index(
                os.path.basename(os.path.dirname(p))) for p in paths])
            order = np.arange(count) % len(paths)
            return images[order], labels[order]
        train, train_labels = load("train", 50000)
        test, test_labels = load("test", 10000)
        archives.cifar10_binary(archive + ".tmp", train, train_labels, test, test_labels)
        os.replace(archive + ".tmp", archive)
    return data_dir, archive


def prepare_cifar10(root):
    """The full-size CIFAR-10 prepared by TFDS (ArrayRecord); returns its data_dir."""
    from dwlt_tf import data  # pylint: disable=import-outside-toplevel
    data_dir, archive = cifar10_full(root)
    with archives.register_checksums("cifar10", {archives.CIFAR10_URL: archive}):
        data.load(data.DataSpec("cifar10", data_dir=data_dir, image_size=32))
    return data_dir


def main(argv):
    del argv
    if FLAGS.num_images:
        print(imagenet_like(FLAGS.root, FLAGS.num_images))
    if FLAGS.cifar10:
        print(prepare_cifar10(FLAGS.root))


if __name__ == "__main__":
    # Flags only when run as a script: the other benchmarks import this module.
    flags.DEFINE_string("root", DEFAULT_ROOT, "Where generated data goes.")
    flags.DEFINE_integer("num_images", 0, "ImageNet-like training images to generate.")
    flags.DEFINE_bool("cifar10", False, "Generate the full-size CIFAR-10 binary archive.")
    app.run(main)
