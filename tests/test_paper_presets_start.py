"""The paper-scale presets start correctly: ResNet-50, robust ImageNet weights, TFDS data.

Full-scale runs are for GPUs; here the paper's configs run a few steps with only the
sizes shrunk (batch, image side, epochs, dataset size): a robustness-library ResNet-50
checkpoint is converted, adversarial IMP (configs/imp.py:imagenet_adv, PGD-3) finds a
ticket on TFDS `imagenet2012` prepared offline from ImageNet-format tars, and
adversarial transfer (configs/transfer.py:adv_cifar10, PGD-10 training, PGD-20
evaluation) trains the ticket on TFDS `cifar10` prepared from a CIFAR-10 binary
archive, with the reference splits scaled to its 8 training images.
"""
import dataclasses
from unittest import mock

import pytest

import archives
from conftest import bundled_images, load_config
from dwlt_tf import config as cfg
from dwlt_tf import (convert, data, evaluate, imp, pruning, pruning_wrapper, runs, tickets,
                     transfer)
from test_convert import _torch_model, _write


def _shrink(config, data_dir, image_size):
    """Only sizes shrink: batch, image side, epochs; every other preset value stays."""
    config.dataset.data_dir = data_dir
    config.dataset.image_size = image_size
    config.train.update(dict(epochs=1, batch_size=4, eval_batch_size=4, eval_start_epoch=0,
                             verbose=0))
    return config


@pytest.fixture
def tiny_cifar10(tmp_path):
    """TFDS cifar10 prepared from a binary archive of 8 training and 2 test images, with
    the reference rule (validation = the original order's tail) at that size: training
    = images 0-3, validation = 4-7."""
    manual = tmp_path / "tfds" / "downloads" / "manual"
    manual.mkdir(parents=True)
    images, labels = bundled_images("train", 1)
    archive = archives.cifar10_binary(str(manual / "cifar-10-binary.tar.gz"), images[:8],
                                      labels[:8], images[8:], labels[8:])
    layout = dataclasses.replace(data.DATASETS["cifar10"], val_start=4, val_end=8)
    with archives.register_checksums("cifar10", {archives.CIFAR10_URL: archive}), \
            mock.patch.dict(data.DATASETS, {"cifar10": layout}):
        yield str(tmp_path / "tfds")


@pytest.fixture(scope="module")
def robust_resnet50(tmp_path_factory):
    """A robustness-library (Salman et al.) ResNet-50 checkpoint, converted."""
    tmp = tmp_path_factory.mktemp("robust")
    path = _write("robustness", _torch_model("resnet50", "imagenet", num_classes=1000),
                  tmp / "robust_resnet50.pt")
    out = str(tmp / "converted")
    convert.save_converted(out, convert.convert(path, "resnet50", "imagenet"))
    return out


# The paper's own sizes (224 px) take minutes on 2 CPU cores: marked slow.
SIZES = [64, pytest.param(224, marks=pytest.mark.slow)]


@pytest.mark.parametrize("image_size", SIZES)
def test_adversarial_imp_preset_starts_on_imagenet(robust_resnet50, imagenet_archive, tmp_path,
                                                   image_size):
    config = _shrink(load_config("imp", "imagenet_adv"), imagenet_archive[0], image_size)
    config.imp.rounds = 2  # round 1 prunes theta0; round 2 trains first
    spec, imp_spec = cfg.train_spec(config.train), cfg.imp_spec(config.imp)
    assert (spec.mode, spec.attack.steps, spec.lr, spec.weight_decay) == ("pgd", 3, 5e-4, 1e-4)
    splits = data.load(cfg.data_spec(config.dataset))
    paths = imp.run(lambda: convert.load_converted(robust_resnet50).model, splits, spec,
                    imp_spec, str(tmp_path / "imp"),
                    pretrained=convert.weights_identity(convert.load_meta(robust_resnet50)))
    assert splits.num_classes == 1000 and splits.num_train == 12
    masks, meta = tickets.load(paths[1])
    assert len(masks) == 53  # every conv of ResNet-50, conv1 and downsamples included
    total = sum(m.size for m in masks.values())
    pruned_round1 = round(0.2 * total)
    expected_zeros = pruned_round1 + round(0.2 * (total - pruned_round1))
    assert sum(int((~m).sum()) for m in masks.values()) == expected_zeros
    assert meta["round"] == 2 and meta["trained_rounds"] == 1


@pytest.mark.parametrize("image_size", [pytest.param(32, marks=pytest.mark.slow)] + SIZES[1:])
def test_adversarial_transfer_preset_starts_on_cifar10(robust_resnet50, tiny_cifar10, tmp_path,
                                                       image_size):
    kernels = pruning_wrapper.get_kernels(pruning_wrapper.wrap(
        convert.load_converted(robust_resnet50).model))
    ticket = tickets.save(str(tmp_path / "ticket"),
                          pruning.one_shot_magnitude_masks(kernels, 0.8),
                          {"source_sha256": convert.load_meta(robust_resnet50)["source_sha256"]})
    config = _shrink(load_config("transfer", "adv_cifar10"), tiny_cifar10, image_size)
    spec = cfg.train_spec(config.train)
    assert (spec.attack.steps, spec.eval_attack.steps, spec.lr) == (10, 20, 0.1)
    dataset = cfg.data_spec(config.dataset)
    result = transfer.run(robust_resnet50, ticket, dataset, spec, str(tmp_path / "run"))
    splits = data.load(dataset)
    assert (splits.num_train, splits.num_val, splits.num_test) == (4, 4, 2)
    model, provenance, _ = runs.load_best(runs.open_run(str(tmp_path / "run")), "ra",
                                              splits)
    assert provenance["ticket_matches_pretrained"] is True
    assert model.output_shape == (None, 10)
    assert pruning_wrapper.model_sparsity(model) == pytest.approx(0.8, abs=1e-6)
    # The best-RA checkpoint reloaded gives the test SA the run recorded for it.
    accuracy = evaluate.evaluate(model, splits, "test", batch_size=2, attack=None)
    assert accuracy.count == 2 and accuracy.sa == result.best_ra.test_sa
    assert result.best_ra.test_ra is not None and result.best_ra.test_ra <= accuracy.sa
