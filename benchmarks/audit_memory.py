r"""Peak memory and time of an audit as the audited split grows: it must not grow with it.

  python benchmarks/audit_memory.py --examples=200,2000 [--version=standard] | tail -1

Each size runs in its own process (peak RSS is per process): a ResNet-18 with the
ImageNet stem at 224 px (the paper's input size; `--base_width` keeps it CPU-sized),
audited by `audit.audit_split` -- the path of the study's audit cells and
`trainers/audit.py` -- on an ImageFolder of the bundled 32-px CIFAR-10 JPEGs repeated up
to the largest size and resized to 224 px like the paper's transfer data. The attack
budgets are cut (`--apgd_steps`, `--fab_steps`, `--square_queries`) so the sizes finish on
CPU: memory depends on the batch, not on the number of iterations.

Prints one JSON line: per size, examples, peak RSS (MB), seconds, and the RSS difference
between the largest and the smallest size (goal: under 150 MB).
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("examples", ["200", "2000"], "Split sizes to audit, one process each.")
flags.DEFINE_enum("version", "standard", ["standard", "fast"], "audit.version")
flags.DEFINE_integer("image_size", 224, "Input side of the audited model.")
flags.DEFINE_integer("base_width", 4, "ResNet-18 width (64 is the real one).")
flags.DEFINE_integer("batch_size", 100, "audit.batch_size")
flags.DEFINE_integer("apgd_steps", 2, "audit.apgd_steps")
flags.DEFINE_integer("fab_steps", 2, "audit.fab_steps")
flags.DEFINE_integer("square_queries", 5, "audit.square_queries")
flags.DEFINE_string("folder", None, "ImageFolder to use (default: generated in a temp dir).")
flags.DEFINE_bool("child", False, "Internal: audit once in this process and print JSON.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED_TEST = os.path.join(REPO, "data", "cifar10_jpeg_small", "test")
CLASSES = ("airplane", "automobile")


def make_folder(root, examples):
    """An ImageFolder (train and test) of `examples` test images of two classes: the
    bundled JPEGs of those classes linked under new names as often as needed."""
    for split in ("train", "test"):
        for label in CLASSES:
            sources = sorted(os.listdir(os.path.join(BUNDLED_TEST, label)))
            folder = os.path.join(root, split, label)
            os.makedirs(folder, exist_ok=True)
            count = examples // len(CLASSES) if split == "test" else 20
            for k in range(count):
                os.symlink(os.path.join(BUNDLED_TEST, label, sources[k % len(sources)]),
                           os.path.join(folder, f"{label}_{k:06d}.jpg"))
    return root


def _audit_once():
    from dwlt_tf import attacks, audit, data, models  # pylint: disable=import-outside-toplevel
    import tf_keras  # pylint: disable=import-outside-toplevel  (after dwlt_tf: Keras 2)
    splits = data.load(data.DataSpec("imagefolder", path=FLAGS.folder,
                                     image_size=FLAGS.image_size, augment="cifar",
                                     stats="cifar10"))
    tf_keras.utils.set_random_seed(0)
    model = models.build_resnet("resnet18", splits.num_classes, "imagenet",
                                *splits.spec.mean_std, base_width=FLAGS.base_width)
    spec = audit.AuditSpec(version=FLAGS.version, apgd_steps=FLAGS.apgd_steps,
                           fab_steps=FLAGS.fab_steps, square_queries=FLAGS.square_queries,
                           batch_size=FLAGS.batch_size, examples=int(FLAGS.examples[0]))
    started = time.time()
    result = audit.audit_split(model, splits, "test", spec, attacks.Attack(8 / 255, 2 / 255, 2))
    return {"examples": result.examples, "seconds": round(time.time() - started, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "sa": result.sa, "autoattack_ra": result.autoattack_ra}


def main(argv):
    del argv
    if FLAGS.child:
        print(json.dumps(_audit_once()))
        return
    sizes = sorted(int(n) for n in FLAGS.examples)
    with tempfile.TemporaryDirectory() as tmp:
        folder = FLAGS.folder or make_folder(tmp, sizes[-1])
        runs = []
        for n in sizes:
            flags_ = [f"--{name}={getattr(FLAGS, name)}" for name in (
                "version", "image_size", "base_width", "batch_size", "apgd_steps",
                "fab_steps", "square_queries")]
            out = subprocess.run([sys.executable, __file__, "--child", f"--examples={n}",
                                  f"--folder={folder}"] + flags_, capture_output=True,
                                 text=True, check=False)
            if out.returncode:
                sys.exit(f"audit of {n} examples failed:\n{out.stderr[-3000:]}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps({"version": FLAGS.version, "image_size": FLAGS.image_size,
                      "batch_size": FLAGS.batch_size, "runs": runs,
                      "rss_growth_mb": round(runs[-1]["peak_rss_mb"] - runs[0]["peak_rss_mb"],
                                             1)}))


if __name__ == "__main__":
    app.run(main)
