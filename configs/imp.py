r"""IMP with rewinding on the pre-training task: the paper's presets.

The reference (script/imp_pretrain/imp_{std,adv}.sh, main_std.py / main_adv.py) prunes
20 % of the remaining conv weights per round (global magnitude, torch.prune), trains
30 epochs per round on ImageNet with SGD lr 0.0005 (constant), momentum 0.9, weight
decay 1e-4, batch 2048, rewinds to the pre-trained weights (BatchNorm included) after
every round, and -- for adversarial IMP -- trains with PGD-3 (eps 8/255, step
16/(3*255)). It prunes theta0 once (ticket 1), then trains 19 x 30 = 570 epochs, saving
each round's checkpoint with its mask: tickets 1..19 at sparsity 1 - 0.8^k (its last
pruning, after epoch 570, is never saved). Here: `rounds=19`, tickets 1..19 (18
trainings: the 19th training only produces the unsaved 20th mask). Raising
`--config.imp.rounds` later continues a finished run.

Variants: imagenet_std (default), imagenet_adv, and `local` (CPU-scale: the bundled
CIFAR-10 JPEGs, classes 0-4, a base_width-8 ResNet-18 trained from the weights given
by --pretrained).

  python trainers/imp.py --config=configs/imp.py:imagenet_adv \
      --pretrained=weights/robust_resnet50 --workdir=runs/imp_adv \
      --config.dataset.data_dir=~/tensorflow_datasets

2:4 structured tickets (what sparse tensor cores run faster): `imp.pattern="2:4"` makes
each round prune one weight of every 4 consecutive input channels instead of 20 %
globally -- ticket 1 is 3:4 (cut from theta0), ticket 2 is 2:4 (cut from the weights
trained under ticket 1) -- so it takes `imp.rounds=2`:

  python trainers/imp.py --config=configs/imp.py:imagenet_adv \
      --pretrained=weights/robust_resnet50 --workdir=runs/imp_adv_2by4 \
      --config.imp.pattern=2:4 --config.imp.rounds=2
"""
import ml_collections

PGD3_IMP = {"eps": 8 / 255, "step_size": 16 / (3 * 255), "steps": 3}
PGD20_EVAL = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 20}


def imp_train(adversarial=False):
    return ml_collections.ConfigDict(dict(
        mode="pgd" if adversarial else "standard", epochs=30, batch_size=2048, lr=0.0005,
        momentum=0.9, weight_decay=1e-4, schedule="constant", milestones=(), gamma=0.1,
        warmup_epochs=0, attack=PGD3_IMP, eval_attack={}, eval_start_epoch=0,
        select_ra=False, eval_batch_size=256, checkpoint_every_steps=500, log_every_steps=50,
        seed=1, precision="float32", test=False, verbose=1))


def get_config(variant="imagenet_std"):
    if variant not in ("imagenet_std", "imagenet_adv", "local"):
        raise ValueError(f"Unknown variant {variant!r}: imagenet_std, imagenet_adv or local")
    config = ml_collections.ConfigDict()
    config.imp = ml_collections.ConfigDict(dict(rounds=19, fraction=0.2, prunable=("conv",),
                                                pattern="unstructured"))
    config.train = imp_train(adversarial=variant == "imagenet_adv")
    config.dataset = ml_collections.ConfigDict(dict(
        name="imagenet", data_dir="~/tensorflow_datasets", path="", data_rate=1.0,
        classes=ml_collections.config_dict.placeholder(tuple), image_size=224,
        augment="imagenet", stats="", val_fraction=0.1, download=False))
    if variant == "local":
        config.imp.rounds = 3
        config.dataset.update(dict(name="imagefolder", data_dir="", path="data/cifar10_jpeg_small",
                                   classes=(0, 1, 2, 3, 4), image_size=32, augment="cifar",
                                   stats="cifar10"))
        config.train.update(dict(mode="pgd", epochs=2, batch_size=64, lr=0.01,
                                 checkpoint_every_steps=0))
    config.runtime = ml_collections.ConfigDict(dict(strategy="auto", intra_op_threads=0,
                                                    inter_op_threads=1, deterministic=False,
                                                    jit_compile=False))
    return config
