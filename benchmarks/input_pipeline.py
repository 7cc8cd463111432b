r"""Input pipeline throughput and memory at ImageNet sizes: dwlt_tf vs a Model Garden one.

  python benchmarks/input_pipeline.py --small=2000 --large=20000 --batches=40

Generates (once, benchmarks/imagenet_like.py) ImageNet-like sets of --small and --large
training images (~400x350 JPEGs) as an ImageFolder and as TFDS `imagenet2012` prepared
from ImageNet-format tars, then measures in a fresh process per case: the training
pipeline (`pipeline.train_batches`: 224-px RandomResizedCrop + flip, exact global shuffle)
and the evaluation pipeline (`pipeline.eval_batches`: Resize 256 + CenterCrop 224) in images
per second and per CPU core, and the process's peak RSS. Next to them, on the same
files in the same run, a plain Model-Garden-style pipeline: shuffled file names,
parallel map of `decode_and_crop_jpeg` on `sample_distorted_bounding_box` crops, bilinear
resize, flip, batch, prefetch -- as Model Garden does it (resize without antialiasing)
and with the antialiased resize that torchvision's RandomResizedCrop (PIL) and dwlt_tf
use, which isolates the pipeline's own cost from the resize kernel's.

Every case runs --rounds times, cases alternating, and each number is the median over
the rounds (throughput on a shared machine varies by +-25 % between runs). Prints one
JSON line: per case {"train_images_per_sec", "train_images_per_sec_per_core",
"eval_images_per_sec", ..., "peak_rss_mb"}, the RSS growth from --small to --large per
reader and the goals' verdicts (growth < 150 MB; dwlt_tf's training pipeline >= the
Model Garden one per core, as Model Garden resizes and with the same resize).
"""
import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import imagenet_like  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("small", 2000, "Training images of the small set.")
flags.DEFINE_integer("large", 20000, "Training images of the large set (10x).")
flags.DEFINE_integer("batches", 40, "Batches timed per pipeline (after 5 warm-up ones).")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_string("root", imagenet_like.DEFAULT_ROOT, "Where generated data goes.")
flags.DEFINE_integer("rounds", 3, "Rounds over all cases (alternating); medians are reported.")
flags.DEFINE_string("measure", None, "Internal: <reader>:<images> to measure in this process.")


def _rate(make, batches, batch_size):
    """Images/s over `batches` batches after 5 warm-up ones; `make(epoch)` gives an
    epoch's batches (epochs follow one another, as in training)."""
    def stream():
        epoch = 0
        while True:
            yield from make(epoch)
            epoch += 1
    iterator = stream()
    for _ in range(5):
        next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - started)


def _model_garden(folder, batch_size, antialias=False):
    """TF Model Garden's ImageNet training input, on JPEG files instead of TFRecords
    (antialias=True: with the antialiased resize torchvision/PIL and dwlt_tf use)."""
    import glob  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    files = sorted(glob.glob(os.path.join(folder, "train", "*", "*.JPEG")))

    def parse(path):
        encoded = tf.io.read_file(path)
        shape = tf.io.extract_jpeg_shape(encoded)
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            shape, tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]), min_object_covered=0.1,
            aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
            use_image_if_no_bounding_boxes=True)
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
        image = tf.image.resize(image, (224, 224), method="bilinear", antialias=antialias)
        return tf.image.random_flip_left_right(image) / 255.0
    return (tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=0)
            .map(parse, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
            .prefetch(tf.data.AUTOTUNE))


def _measure(reader, num_images):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from dwlt_tf import data, pipeline  # pylint: disable=import-outside-toplevel
    out = imagenet_like.imagenet_like(FLAGS.root, num_images)
    cores = os.cpu_count()
    result = {"reader": reader, "train_images": num_images}
    if reader.startswith("model_garden"):
        baseline = _model_garden(os.path.join(out, "folder"), FLAGS.batch_size,
                                 antialias=reader.endswith("antialiased"))
        rate = _rate(lambda epoch: baseline, FLAGS.batches, FLAGS.batch_size)
        result.update(train_images_per_sec=rate, train_images_per_sec_per_core=rate / cores)
    else:
        spec = (data.DataSpec("imagefolder", path=os.path.join(out, "folder"), image_size=224,
                              val_fraction=0.1) if reader == "imagefolder" else
                data.DataSpec("imagenet", data_dir=os.path.join(out, "tfds"), image_size=224))
        started = time.perf_counter()
        splits = data.load(spec)  # (TFDS prepares the dataset the first time)
        result["load_seconds"] = time.perf_counter() - started
        train = _rate(lambda epoch: pipeline.train_batches(splits, FLAGS.batch_size, seed=0,
                                                           epoch=epoch),
                      FLAGS.batches, FLAGS.batch_size)
        # Evaluation preprocessing timed on the training images (the larger split).
        evaluation = _rate(lambda epoch: pipeline.eval_batches(splits, "train",
                                                               FLAGS.batch_size),
                           FLAGS.batches, FLAGS.batch_size)
        result.update(train_images_per_sec=train, train_images_per_sec_per_core=train / cores,
                      eval_images_per_sec=evaluation,
                      eval_images_per_sec_per_core=evaluation / cores)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del tf
    return result


def main(argv):
    del argv
    if FLAGS.measure:
        reader, images = FLAGS.measure.split(":")
        print(json.dumps(_measure(reader, int(images))))
        return
    for size in (FLAGS.small, FLAGS.large):  # generate and prepare before timing anything
        out = imagenet_like.imagenet_like(FLAGS.root, size)
        # (in a child: this process stays free of TensorFlow while the others are timed)
        subprocess.run([sys.executable, "-c", "import sys; from dwlt_tf import data; "
                        "data.load(data.DataSpec('imagenet', data_dir=sys.argv[1]))",
                        os.path.join(out, "tfds")], check=True, capture_output=True)
    cases = [(r, n) for n in (FLAGS.small, FLAGS.large) for r in ("imagefolder", "tfds")]
    cases += [("model_garden", FLAGS.large), ("model_garden_antialiased", FLAGS.large)]
    rounds = {case: [] for case in cases}
    for _ in range(FLAGS.rounds):  # alternating cases: a noisy machine affects all alike
        for reader, images in cases:
            out = subprocess.run([sys.executable, __file__, f"--measure={reader}:{images}",
                                  f"--batches={FLAGS.batches}",
                                  f"--batch_size={FLAGS.batch_size}", f"--root={FLAGS.root}"],
                                 capture_output=True, text=True, check=True)
            rounds[(reader, images)].append(json.loads(out.stdout.strip().splitlines()[-1]))
    results = []
    for case, runs in rounds.items():  # the median of each number over the rounds
        merged = dict(runs[0])
        for key, value in runs[0].items():
            if isinstance(value, float):
                merged[key] = sorted(r[key] for r in runs)[len(runs) // 2]
        merged["rounds"] = len(runs)
        results.append(merged)
    by = {(r["reader"], r["train_images"]): r for r in results}
    growth = {reader: by[(reader, FLAGS.large)]["peak_rss_mb"]
              - by[(reader, FLAGS.small)]["peak_rss_mb"] for reader in ("imagefolder", "tfds")}
    ratio = {f"{reader}_vs_{baseline}": by[(reader, FLAGS.large)]["train_images_per_sec_per_core"]
             / by[(baseline, FLAGS.large)]["train_images_per_sec_per_core"]
             for reader in ("imagefolder", "tfds")
             for baseline in ("model_garden", "model_garden_antialiased")}
    with open(os.path.join(imagenet_like.imagenet_like(FLAGS.root, FLAGS.large),
                           "done.json")) as f:
        generated = json.load(f)
    print(json.dumps({
        "benchmark": "input_pipeline", "cpu_cores": os.cpu_count(),
        "batch_size": FLAGS.batch_size, "mean_jpeg_bytes": generated["mean_jpeg_bytes"],
        "cases": results, "rss_growth_mb_small_to_large": growth,
        "train_per_core_ratios": ratio,
        "goals": {"rss_growth_below_150_mb": all(g < 150 for g in growth.values()),
                  "train_at_least_model_garden": all(
                      r >= 1.0 for k, r in ratio.items() if k.endswith("_model_garden")),
                  "train_at_least_model_garden_same_resize": all(
                      r >= 1.0 for k, r in ratio.items() if k.endswith("antialiased"))}}))


if __name__ == "__main__":
    app.run(main)
