r"""dwlt_tf against PyTorch in one run: PGD-10 training steps and PGD-20 evaluation.

Every case runs each side in a fresh process, the sides alternating, `--rounds` times
(medians reported): `adversarial_training_throughput.py` (dwlt_tf: the trainers' step,
and `evaluate.Evaluator` for evaluation) and `torch_adversarial_training.py` in its two
variants -- `reference` (torch.nn.utils.prune hooks, as the reference) and `hook_free`
(dense modules re-masked after each update). Prints one JSON line per case, then a
summary line with the goals:

  python benchmarks/framework_comparison.py | tail -1

Cases: ResNet-50 (ImageNet stem, 32 px) and ResNet-18 (CIFAR stem, 32 px), float32 and
bfloat16, training (PGD-10, model.train() attack) and evaluation (PGD-20 under
model.eval(), plus the clean and adversarial forward passes). On a GPU host:

  python benchmarks/framework_comparison.py --precisions=float32,float16 --jit_compile \
      --device=cuda
"""
import json
import os
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("archs", ["resnet50:imagenet", "resnet18:cifar"], "arch:stem pairs.")
flags.DEFINE_list("precisions", ["float32", "bfloat16"], "float32, bfloat16, float16.")
flags.DEFINE_list("modes", ["train", "eval"], "train (PGD-10 step) and/or eval (PGD-20).")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("rounds", 1, "Alternating rounds per case (medians reported).")
flags.DEFINE_bool("jit_compile", False, "dwlt_tf side compiled with XLA (a GPU setting).")
flags.DEFINE_enum("device", "cpu", ["cpu", "cuda"], "PyTorch device (dwlt_tf uses what TF sees).")
flags.DEFINE_string("steps", "resnet50:5:2,resnet18:2:1",
                    "arch:timed:warmup steps (training steps, or evaluation batches).")
flags.DEFINE_integer("eval_repeats", 3, "dwlt_tf evaluations timed per run (of `timed` "
                                        "batches each); PyTorch times as many batches.")
flags.DEFINE_enum("metric", "images_per_sec_best", ["images_per_sec", "images_per_sec_best"],
                  "Per run: median step (images_per_sec) or fastest step (_best). Fastest is "
                  "the default on shared VMs, whose CPU quota throttles in bursts.")

_HERE = os.path.dirname(os.path.abspath(__file__))
ATTACK_STEPS = {"train": 10, "eval": 20}


def _run(argv):
    out = subprocess.run([sys.executable] + argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(values):
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def main(argv):
    del argv
    steps = {}
    for item in FLAGS.steps.split(","):
        arch, timed, warmup = item.split(":")
        steps[arch] = (int(timed), int(warmup))
    summary = []
    for pair in FLAGS.archs:
        arch, stem = pair.split(":")
        timed, warmup = steps[arch]
        for mode in FLAGS.modes:
            for precision in FLAGS.precisions:
                common = [f"--arch={arch}", f"--stem={stem}", "--image_size=32",
                          f"--batch_size={FLAGS.batch_size}", f"--warmup={warmup}",
                          f"--attack_steps={ATTACK_STEPS[mode]}", f"--precision={precision}",
                          f"--mode={mode}"]
                torch_steps = timed * FLAGS.eval_repeats if mode == "eval" else timed
                sides = {
                    "dwlt_tf": [os.path.join(_HERE, "adversarial_training_throughput.py")]
                    + common + [f"--steps={timed}", f"--eval_repeats={FLAGS.eval_repeats}"]
                    + (["--jit_compile"] if FLAGS.jit_compile else []),
                    "torch_reference": [os.path.join(_HERE, "torch_adversarial_training.py")]
                    + common + [f"--steps={torch_steps}", "--variant=reference",
                                f"--device={FLAGS.device}"],
                    "torch_hook_free": [os.path.join(_HERE, "torch_adversarial_training.py")]
                    + common + [f"--steps={torch_steps}", "--variant=hook_free",
                                f"--device={FLAGS.device}"],
                }
                rates = {side: [] for side in sides}
                for _ in range(FLAGS.rounds):
                    for side, side_argv in sides.items():
                        rates[side].append(_run(side_argv)[FLAGS.metric])
                result = {side: _median(r) for side, r in rates.items()}
                best_torch = max(result["torch_reference"], result["torch_hook_free"])
                line = {"arch": arch, "stem": stem, "mode": mode, "precision": precision,
                        "images_per_sec": result, "runs": rates,
                        "vs_torch_reference": result["dwlt_tf"] / result["torch_reference"],
                        "vs_torch_hook_free": result["dwlt_tf"] / result["torch_hook_free"],
                        "vs_best_torch": result["dwlt_tf"] / best_torch,
                        "batch_size": FLAGS.batch_size, "timed": timed, "warmup": warmup,
                        "attack_steps": ATTACK_STEPS[mode], "jit_compile": FLAGS.jit_compile,
                        "metric": FLAGS.metric}
                print(json.dumps(line), flush=True)
                summary.append(line)
    goals = {}
    for pair in FLAGS.archs:
        arch = pair.split(":")[0]
        train = [s for s in summary if s["arch"] == arch and s["mode"] == "train"]
        if train:
            f32 = [s for s in train if s["precision"] == "float32"]
            best_ours = max(s["images_per_sec"]["dwlt_tf"] for s in train)
            best_theirs = max(max(s["images_per_sec"]["torch_reference"],
                                  s["images_per_sec"]["torch_hook_free"]) for s in train)
            goals[f"{arch}_train_float32_vs_hook_free"] = (
                f32[0]["vs_torch_hook_free"] if f32 else None)
            goals[f"{arch}_train_best_vs_best"] = best_ours / best_theirs
        for s in summary:
            if s["arch"] == arch and s["mode"] == "eval":
                goals[f"{arch}_eval_{s['precision']}_vs_torch_eval"] = (
                    s["images_per_sec"]["dwlt_tf"] / s["images_per_sec"]["torch_reference"])
    print(json.dumps({"summary": goals,
                      "goals": {"train_float32_vs_hook_free": ">= 1.0",
                                "train_best_vs_best": ">= 1.0 (stretch 1.25)",
                                "eval_vs_torch_eval": ">= 1.5"}}))


if __name__ == "__main__":
    app.run(main)
