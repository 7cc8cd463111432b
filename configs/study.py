r"""The double-win study: IMP tickets of each pre-training, transferred with the dense model
to each downstream task under standard and adversarial training, at several data rates.

Variants:

* `paper`: the paper's study -- ResNet-50 on ImageNet, pre-trainings `standard`
  (torchvision), `fast_adversarial` (Wong et al. 2020) and `adversarial` (Salman et al.
  2020; converted checkpoints, see trainers/convert_weights.py), IMP with the reference's
  presets (configs/imp.py; adversarial IMP with PGD-3 for the robust pre-trainings),
  tickets at 73.79 / 79.03 / 83.22 / 89.26 / 91.41 % sparsity (rounds 6, 7, 8, 10, 11),
  transfer to CIFAR-10, CIFAR-100 and SVHN at data rates 1, 0.1 and 0.01 with the
  reference's transfer presets (configs/transfer.py). For GPUs:

    python trainers/study.py --config=configs/study.py:paper --workdir=runs/paper \
        --config.pretrainings.standard.path=weights/resnet50_torchvision \
        --config.pretrainings.fast_adversarial.path=weights/resnet50_fast_at \
        --config.pretrainings.adversarial.path=weights/resnet50_linf4 \
        --config.source.data_dir=~/tensorflow_datasets \
        --config.downstream.dataset.data_dir=~/tensorflow_datasets

* `cifar`: the CIFAR-scale replication, on 2 CPU cores in 4 h 19 min (measured, README
  "Results", docs/results/cifar): a base_width-8 ResNet-18 (cifar stem, 32 px)
  pre-trained on the 25,000 training images of CIFAR-10 classes 0-4 (10 % of them
  validate) -- standard training (15 epochs), and PGD-3
  training continued from it (10 epochs) for the robust pre-training; IMP with rewinding
  on that source task (37 % of the remaining conv weights per round, tickets 2, 3 and 5
  at 60.3 %, 75.0 % and 90.1 % sparsity); OMP and random baselines at 90.1 %; transfer of the dense
  models and the tickets to classes 5-9 at data rates 0.1 and 0.5 under standard and
  PGD-3 training, 3 seeds, test SA/RA (PGD-10) on all 5,000 test images; the `paired`
  rule; the standard AutoAttack audit of the dense models (first seed) and the exported
  ticket on 500 test images. Reads TFDS's `cifar10` (the reference's splits):

    python trainers/study.py --config=configs/study.py:cifar --workdir=runs/cifar \
        --config.source.data_dir=~/tensorflow_datasets \
        --config.downstream.dataset.data_dir=~/tensorflow_datasets

* `cifar_jpeg`: the same on the JPEG copy of CIFAR-10 unpacked into data/cifar10_jpeg
  (data/README.md) as an ImageFolder; this is how docs/results/cifar was made, with two
  processes sharing the workdir (one thread each):

    python trainers/study.py --config=configs/study.py:cifar_jpeg --workdir=runs/cifar \
        --config.runtime.intra_op_threads=1 &   # and the same command once more

* `cifar_budget` / `cifar_budget_jpeg`: `cifar` / `cifar_jpeg` within the ~2.5 h a
  replication may take on 2 CPU cores (2 h 15 min measured, docs/results/cifar_budget;
  the same double-win verdicts as `cifar_jpeg`, intervals ~1.3x as wide): 2 seeds instead of
  3, SA/RA on 2,500 of the 5,000 test images (evenly spaced, 500 per class), 500
  validation images (100 per class), the audit on 250 test images; its pre-trainings,
  IMP and baselines are `cifar`'s cells. Two one-thread processes, as for `cifar_jpeg`,
  and a third that computes the robust pre-training as soon as the standard one is done
  (processes take cells in the graph's order, which reaches it only after every cell of
  the standard pre-training; one process would then wait ~20 min with nothing to do):

    W="--config=configs/study.py:cifar_budget_jpeg --workdir=runs/cifar_budget \
       --config.runtime.intra_op_threads=1"
    python trainers/study.py $W & python trainers/study.py $W &
    python trainers/study.py $W --cell=pretrain:adversarial --wait &

* `quickstart`: the same study in miniature on 2 CPU cores in about 15 minutes, with
  verdicts that can conclude: the pre-trained weights of `cifar_jpeg` (weights/, made by
  its pre-training cells, weights/README.md) as the standard and the robust
  pre-training; IMP finds 3 tickets per pre-training on the bundled source images
  (CIFAR-10 classes 0-4 in data/cifar10_jpeg_small; 50 % per round: 50 / 75 / 87.5 %
  sparse); the dense model and tickets 2 and 3 are transferred to the bundled downstream
  task (classes 5-9, data/cifar10_jpeg_transfer: 900 training images, 1,500 test images)
  under standard and PGD-3 training, with the OMP and random baselines at the sparsest
  ticket; SA and RA (PGD-10) with paired verdicts. Every stage of `paper` but the audit
  runs (see `audit`).

    python trainers/study.py --config=configs/study.py:quickstart --workdir=runs/quickstart

* `audit`: the quickstart plus the robustness audit -- AutoAttack's standard version:
  APGD-CE, APGD-T and FAB-T with 100 iterations, Square with 5,000 queries, on 500 of the
  1,500 test images (100 per class) -- of the dense models and the exported ticket. Its cells are the
  quickstart's, so after the quickstart it only audits:

    python trainers/study.py --config=configs/study.py:audit --workdir=runs/quickstart

* `tiny`: a seconds-scale study for tests (2 IMP rounds, 1 epoch everywhere).

Rigor settings (every variant; override with dotted flags): `seeds` -- every transfer
runs once per seed; `report` -- how tickets are judged (dwlt_tf/verdicts.py): `rule`
`paired` (the default: the difference ticket - dense on the same test examples with a
`confidence` paired-bootstrap interval over `resamples` resamples, hierarchical over
seeds, against a non-inferiority `margin` in points: yes / no / inconclusive), or the
older `tolerance` (within `tolerance` points of the dense mean) and `std` (within one
standard deviation of the dense model over seeds); `pruning.methods` -- `imp` plus the
baselines `omp` (one-shot magnitude pruning of the pre-trained weights) and `random`,
each at the exact sparsity of the IMP tickets in `pruning.rounds` (empty: every
transferred round), and the 2:4 structured tickets (the sparsity GPUs' sparse tensor
cores run faster): `imp_2by4` (IMP with rewinding descending 4:4 -> 3:4 -> 2:4 along
the input channels, one weight per group of 4 per round) and its one-shot baseline
`omp_2by4`, e.g. `--config.pruning.methods=imp,omp,random,imp_2by4,omp_2by4`; the
report sets each 2:4 ticket beside the unstructured ticket of nearest sparsity; `audit`
-- the robustness audit (`dwlt_tf/audit.py`, AutoAttack).
`paper` uses 3 seeds, both baselines at every ticket and the standard AutoAttack audit
(x3 the transfer runs of IMP alone: narrow with --config.pruning.rounds=8,11). The
quickstart uses one seed (its intervals cover the test examples, not training
randomness) and the baselines at its sparsest ticket, to stay within ~15 minutes.
"""
import importlib.util
import os

import ml_collections


def _sibling(name):
    """configs/<name>.py, loaded by path (configs are files, not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"_dwlt_config_{name}", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                             f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_transfer = _sibling("transfer")
_imp = _sibling("imp")

BUNDLED = "data/cifar10_jpeg_small"
# The whole CIFAR-10 as JPEG files in ImageFolder layout (not in git: README "Results").
CIFAR10_JPEG = "data/cifar10_jpeg"
# The quickstart's downstream task: CIFAR-10 classes 5-9, 200 training and 300 test
# images each (data/README.md).
TRANSFER = "data/cifar10_jpeg_transfer"
# The quickstart's pre-trained weights: made by `cifar_jpeg`'s pre-training cells on all
# 25,000 training images of classes 0-4 (weights/README.md gives the command).
QUICKSTART_WEIGHTS = {"standard": "weights/cifar5_resnet18w8_standard",
                      "adversarial": "weights/cifar5_resnet18w8_adversarial"}
PGD3 = {"eps": 8 / 255, "step_size": 16 / (3 * 255), "steps": 3}  # the reference's IMP attack


def _paper():
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(arch="resnet50", stem="imagenet",
                                                  base_width=64, sync_batchnorm=False))
    imp_config = _imp.get_config("imagenet_std")
    config.source = imp_config.dataset
    config.pretrainings = ml_collections.ConfigDict({
        "standard": dict(path="weights/resnet50_torchvision", train={}, imp_mode="standard",
                         init=""),
        "fast_adversarial": dict(path="weights/resnet50_fast_at", train={}, imp_mode="pgd",
                                 init=""),
        "adversarial": dict(path="weights/resnet50_linf4", train={}, imp_mode="pgd", init=""),
    })
    config.imp = imp_config.imp
    # A study's 2:4 tickets are pruning methods of their own (pruning.methods: imp_2by4).
    del config.imp["pattern"]
    config.imp.rounds = 11
    config.imp.train = imp_config.train
    del config.imp.train["mode"]  # per pre-training: pretrainings.<name>.imp_mode
    config.tickets = (6, 7, 8, 10, 11)
    downstream = _transfer.dataset()
    del downstream["name"], downstream["data_rate"]  # from `datasets` and `data_rates`
    config.downstream = ml_collections.ConfigDict(dict(
        datasets=("cifar10", "cifar100", "svhn"), data_rates=(1.0, 0.1, 0.01),
        dataset=downstream))
    config.transfer = ml_collections.ConfigDict({
        "standard": _transfer.standard_train(),
        "adversarial": _transfer.adversarial_train("cifar10"),
        "adversarial:svhn": _transfer.adversarial_train("svhn"),
    })
    # Verdicts (dwlt_tf/verdicts.py): `paired` -- ticket minus dense on the same test
    # examples with a 95 % paired-bootstrap interval against a non-inferiority margin
    # (points): yes / no / inconclusive. `tolerance` and `std`: the older yes/no rules.
    config.report = ml_collections.ConfigDict(dict(rule="paired", margin=1.0, tolerance=0.0,
                                                   confidence=0.95, resamples=2000, seed=0))
    # method: whose ticket to deploy (imp, or imp_2by4 for a 2:4 one); onnx: also write
    # model.onnx for TensorRT (pip install -e '.[onnx]').
    config.export = ml_collections.ConfigDict(dict(enabled=True, version=1, tflite=False,
                                                   onnx=False, method="imp"))
    config.runtime = _transfer.runtime()
    config.seeds = (1, 2, 3)
    config.pruning = ml_collections.ConfigDict(dict(methods=("imp", "omp", "random"),
                                                    rounds=(), seed=0))
    # AutoAttack's standard version (dwlt_tf/audit.py): APGD-CE, APGD-T, FAB-T, Square.
    config.audit = ml_collections.ConfigDict(dict(
        enabled=True, version="standard", eps=ml_collections.config_dict.placeholder(float),
        apgd_steps=100, fab_steps=100, target_classes=9, square_queries=5000,
        square_p_init=0.8, examples=0, subset="first", seed=0, batch_size=256))
    # Cells are computed under leases (any number of processes share a workdir): a holder
    # refreshes its lease every heartbeat; one silent for stale_seconds is taken over.
    config.leases = ml_collections.ConfigDict(dict(heartbeat_seconds=30.0, stale_seconds=300.0))
    # --launcher=submitit: one job per cell (dwlt_tf/launcher.py); slurm: extra sbatch
    # parameters (e.g. {"account": "my-lab", "constraint": "a100"}).
    config.launcher = ml_collections.ConfigDict(dict(
        cluster="auto", partition="", gpus_per_cell=1, cpus_per_cell=8, mem_gb=64,
        timeout_min=24 * 60, max_parallel=8, folder="", nodes=1, tasks_per_node=1,
        retries=3, wait=False, slurm={}))
    return config


def _miniature(epochs, imp_epochs, pretrain_epochs, rounds, eval_steps, train_steps):
    config = _paper()
    config.model.update(dict(arch="resnet18", stem="cifar", base_width=8))
    config.source = _transfer.dataset("imagefolder", 1.0)
    config.source.update(dict(data_dir="", path=BUNDLED, classes=(0, 1, 2, 3, 4),
                              image_size=32, augment="cifar", stats="cifar10"))
    pgd_eval = {"eps": 8 / 255, "step_size": 2 / 255, "steps": eval_steps}
    pgd_train = {"eps": 8 / 255, "step_size": 2 / 255, "steps": train_steps}

    def pretrain(mode):
        spec = _transfer.standard_train()
        spec.update(dict(mode=mode, epochs=pretrain_epochs, batch_size=64, lr=0.05,
                         milestones=(max(1, pretrain_epochs * 3 // 4),), attack=pgd_train,
                         eval_attack={}, test=False, verbose=0))
        return spec
    # Robust pre-training continues from the standard one (adversarial fine-tuning):
    # from scratch, PGD training of so small a model on 900 images barely learns.
    config.pretrainings = ml_collections.ConfigDict({
        "standard": dict(path="", train=pretrain("standard"), imp_mode="standard", init=""),
        "adversarial": dict(path="", train=pretrain("pgd"), imp_mode="pgd", init="standard"),
    })
    config.imp.update(dict(rounds=rounds, fraction=0.4))
    config.imp.train.update(dict(epochs=imp_epochs, batch_size=64, lr=0.01, attack=pgd_train,
                                 checkpoint_every_steps=0, verbose=0))
    config.tickets = tuple(range(1, rounds + 1))
    config.downstream.datasets = ("imagefolder",)
    config.downstream.data_rates = (0.5,)
    config.downstream.dataset.update(dict(data_dir="", path=BUNDLED, classes=(5, 6, 7, 8, 9),
                                          image_size=32, augment="cifar", stats="cifar10"))
    milestones = (max(1, epochs * 3 // 4),)
    config.transfer.standard.update(dict(epochs=epochs, batch_size=64, lr=0.01,
                                         milestones=milestones, eval_attack=pgd_eval,
                                         eval_batch_size=250, verbose=0))
    config.transfer.adversarial.update(dict(epochs=epochs, batch_size=64, lr=0.05,
                                            milestones=milestones,
                                            eval_start_epoch=epochs // 2,
                                            attack=pgd_train, eval_attack=pgd_eval,
                                            eval_batch_size=250, verbose=0))
    del config.transfer["adversarial:svhn"]
    config.seeds = (1,)
    config.pruning.rounds = (rounds,)  # baselines at the sparsest ticket only
    config.audit.update(dict(enabled=False, batch_size=250))
    config.launcher.update(dict(gpus_per_cell=0, cpus_per_cell=2, mem_gb=4, timeout_min=60,
                                max_parallel=2))
    return config


def _cifar(dataset):
    """The CIFAR-scale replication (module docstring): every stage of `paper`, sized for
    2 CPU cores (4 h 19 min measured); `dataset` is the source/downstream dataset section."""
    config = _miniature(epochs=4, imp_epochs=2, pretrain_epochs=15, rounds=5, eval_steps=10,
                        train_steps=3)
    config.source = dataset.copy_and_resolve_references()
    config.source.classes = (0, 1, 2, 3, 4)
    pgd3 = dict(PGD3)
    for name, epochs, lr in (("standard", 15, 0.1), ("adversarial", 10, 0.05)):
        config.pretrainings[name].train.update(dict(
            epochs=epochs, batch_size=128, lr=lr, schedule="cosine", milestones=(),
            attack=pgd3, verbose=0))
    config.imp.update(dict(rounds=5, fraction=0.37))  # tickets 1-5: 37 % ... 90.1 % sparse
    config.imp.train.update(dict(epochs=2, batch_size=128, lr=0.01, attack=pgd3))
    config.tickets = (2, 3, 5)                         # 60.3 %, 75.0 %, 90.1 %
    config.downstream.data_rates = (0.1, 0.5)
    config.downstream.datasets = (dataset.name,)
    config.downstream.dataset = dataset.copy_and_resolve_references()
    del config.downstream.dataset["name"], config.downstream.dataset["data_rate"]
    config.downstream.dataset.classes = (5, 6, 7, 8, 9)
    # An ImageFolder's validation split: 200 training images per class (TFDS's CIFAR-10
    # keeps the reference's, training images 45000-49999). Model selection needs far
    # fewer examples than the verdicts, which use the whole test split.
    config.downstream.dataset.val_fraction = 0.04
    config.transfer.standard.update(dict(epochs=4, batch_size=128, lr=0.01, milestones=(3,),
                                         eval_batch_size=500))
    config.transfer.adversarial.update(dict(epochs=3, batch_size=128, lr=0.05,
                                            milestones=(2,), eval_start_epoch=1, attack=pgd3,
                                            eval_batch_size=500))
    config.seeds = (1, 2, 3)
    config.pruning.rounds = (5,)  # OMP and random at the sparsest ticket (90.1 %)
    # The standard audit on 500 test images of each audited model, 100 of each class
    # (evenly spaced over the split; Square's 5,000 queries dominate the cost).
    config.audit.update(dict(enabled=True, examples=500, subset="spread", batch_size=250))
    config.launcher.update(dict(cpus_per_cell=1, max_parallel=2, timeout_min=120))
    return config


def _cifar_budget(dataset):
    """`cifar` within ~2.5 h on 2 CPU cores (2 h 15 min measured; module docstring):
    2 seeds, a test split of 2,500 of the 5,000 test images (evenly spaced: 500 per
    class), 500 validation images, the audit on 250 test images. Its pre-trainings, IMP and baselines are `cifar`'s own
    cells (the source task is unchanged), so in `cifar`'s workdir only the transfers and
    audits run."""
    config = _cifar(dataset)
    config.seeds = (1, 2)
    config.downstream.dataset.update(dict(test_examples=2500, val_fraction=0.02))
    config.audit.examples = 250
    return config


def _quickstart():
    """The quickstart (module docstring): the pre-trained weights of `cifar_jpeg`, IMP on
    the bundled source images, transfer to the bundled downstream images."""
    config = _miniature(epochs=8, imp_epochs=2, pretrain_epochs=15, rounds=3, eval_steps=10,
                        train_steps=3)
    config.pretrainings = ml_collections.ConfigDict({
        name: dict(path=path, train={}, imp_mode="pgd" if name == "adversarial" else
                   "standard", init="") for name, path in QUICKSTART_WEIGHTS.items()})
    config.imp.fraction = 0.5                       # tickets 1-3: 50 %, 75 %, 87.5 % sparse
    # Ticket 1 is the pre-trained weights pruned once before any training (the
    # reference's IMP): OMP at 50 %, nothing to learn from transferring it here.
    config.tickets = (2, 3)
    config.imp.train.attack = dict(PGD3)
    config.downstream.data_rates = (1.0,)
    config.downstream.dataset.update(dict(path=TRANSFER,
                                          classes=ml_collections.config_dict.placeholder(tuple)))
    config.transfer.standard.update(dict(epochs=6, milestones=(5,)))
    config.transfer.adversarial.update(dict(epochs=5, milestones=(4,), eval_start_epoch=2,
                                            attack=dict(PGD3)))
    return config


def _cifar_dataset(imagefolder_path=None):
    """CIFAR-10 at 32 px from TFDS (the reference's splits), or an ImageFolder copy."""
    dataset = _transfer.dataset("cifar10", 1.0)
    dataset.update(dict(image_size=32, augment="cifar", stats="cifar10"))
    if imagefolder_path:
        dataset.update(dict(name="imagefolder", data_dir="", path=imagefolder_path))
    return dataset


def get_config(variant="quickstart"):
    if variant == "paper":
        return _paper()
    if variant == "cifar":
        return _cifar(_cifar_dataset())
    if variant == "cifar_jpeg":
        return _cifar(_cifar_dataset(CIFAR10_JPEG))
    if variant == "cifar_budget":
        return _cifar_budget(_cifar_dataset())
    if variant == "cifar_budget_jpeg":
        return _cifar_budget(_cifar_dataset(CIFAR10_JPEG))
    if variant in ("quickstart", "audit"):
        config = _quickstart()
        config.audit.update(dict(enabled=variant == "audit", examples=500, subset="spread"))
        return config
    if variant == "tiny":
        config = _miniature(epochs=1, imp_epochs=1, pretrain_epochs=1, rounds=2,
                            eval_steps=2, train_steps=2)
        del config.pretrainings["standard"]
        config.pretrainings.adversarial.init = ""
        config.downstream.data_rates = (0.2,)
        config.pruning.methods = ("imp",)
        config.audit.update(dict(apgd_steps=5, fab_steps=3, target_classes=2,
                                 square_queries=20, examples=50))
        return config
    raise ValueError(f"Unknown variant {variant!r}: paper, cifar, cifar_jpeg, cifar_budget, "
                     "cifar_budget_jpeg, quickstart, audit or tiny")
