"""Tests for dwlt_tf.folding: BatchNorm folded into convolutions for inference."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from dwlt_tf import attacks, evaluate, folding, models, pipeline, pruning, pruning_wrapper


@pytest.mark.parametrize("arch,stem,convs", [("resnet18", "cifar", 20),
                                             ("resnet50", "imagenet", 53)])
def test_every_conv_folds_with_its_batchnorm(arch, stem, convs):
    model = models.build_resnet(arch, 10, stem, base_width=4)
    pairs = folding.conv_batchnorm_pairs(model)
    assert len(pairs) == convs == len(models.conv_layer_names(model))
    assert pairs["conv1"] == "bn1" and pairs["layer2.0.downsample.0"] == "layer2.0.downsample.1"
    # A wrapped model shares its BatchNorms with the plain one: still each pair once.
    wrapped = folding.conv_batchnorm_pairs(pruning_wrapper.wrap(model))
    assert wrapped == {f"global_mask_wrapper_{conv}": bn for conv, bn in pairs.items()}


def _test_images(splits):
    batch = next(iter(pipeline.eval_batches(splits, "test", 500, with_noise=True)))
    return batch["image"], batch["label"], batch["noise"]


def test_folded_model_gives_the_same_logits_and_verdicts(trained_resnet):
    model, splits = trained_resnet
    folded = folding.FoldedModel(model)
    images, labels, noise = _test_images(splits)
    logits, folded_logits = model(images).numpy(), folded(images).numpy()
    scale = np.abs(logits).max()
    assert np.abs(folded_logits - logits).max() <= 1e-4 * scale
    np.testing.assert_array_equal(folded_logits.argmax(1), logits.argmax(1))
    # PGD-20 verdict for verdict, from the same random start.
    robust = []
    for m in (model, folded):
        adv = attacks.pgd_attack(m, images, labels, 8 / 255, 2 / 255, 20, noise=noise)
        robust.append(np.argmax(m(adv).numpy(), 1) == labels.numpy())
    np.testing.assert_array_equal(robust[0], robust[1])
    assert 0 < robust[0].mean() < (logits.argmax(1) == labels.numpy()).mean()


def test_folded_kernels_keep_the_pruned_zeros(trained_resnet):
    model, _ = trained_resnet
    folded = folding.FoldedModel(model)
    for name, wrapper in pruning_wrapper.wrappers(model).items():
        kernel = folded.model.get_layer(name).kernel.numpy()
        np.testing.assert_array_equal(kernel[wrapper.mask.numpy() == 0], 0.0)


def test_evaluation_folds_and_follows_weight_changes(trained_resnet):
    model, splits = trained_resnet
    attack = attacks.Attack(8 / 255, 2 / 255, 5)
    folded = evaluate.Evaluator(model, attack)
    plain = evaluate.Evaluator(model, attack, fold_batchnorm=False)
    def same(a, b):  # verdicts exactly, the mean loss up to rounding
        return (a.sa, a.ra, a.count) == (b.sa, b.ra, b.count) and abs(a.loss - b.loss) <= 1e-5 * b.loss

    before_accuracy = folded(splits, "test", 250)
    assert same(before_accuracy, plain(splits, "test", 250))
    assert folded._folded is not None and plain._folded is None  # pylint: disable=protected-access
    before = [v.numpy() for v in model.variables]
    try:  # as after a training epoch: new weights and BatchNorm statistics
        for v in model.variables:
            if "gamma" in v.name:
                v.assign(v * 1.2)
            if "moving_mean" in v.name:
                v.assign(v + 0.05)
        after = folded(splits, "test", 250)
        assert same(after, plain(splits, "test", 250))
        assert after.sa != before_accuracy.sa  # the change mattered: refresh was needed
    finally:
        for value, v in zip(before, model.variables):
            v.assign(value)


def test_folded_model_refuses_training_mode_and_unfoldable_models():
    model = models.build_resnet("resnet18", 10, "cifar", base_width=4)
    with pytest.raises(ValueError, match=r"inference mode only \(training=False\)"):
        folding.FoldedModel(model)(tf.zeros([1, 32, 32, 3]), training=True)
    inputs = tf_keras.Input((8, 8, 3))
    plain = tf_keras.Model(inputs, tf_keras.layers.Dense(2)(tf_keras.layers.Flatten()(inputs)),
                           name="mlp")
    with pytest.raises(ValueError, match="Model 'mlp' has no conv -> BatchNorm pair to fold"):
        folding.FoldedModel(plain)
    # Evaluation of such a model runs it unfolded: the Evaluator's SA is the model's own.
    assert not folding.conv_batchnorm_pairs(plain)
    from conftest import bundled_cifar_splits  # pylint: disable=import-outside-toplevel
    from dwlt_tf import evaluate, pipeline  # pylint: disable=import-outside-toplevel
    splits = bundled_cifar_splits()
    tf_keras.utils.set_random_seed(4)
    inputs = tf_keras.Input((32, 32, 3))
    mlp = tf_keras.Model(inputs, tf_keras.layers.Dense(5)(tf_keras.layers.Flatten()(inputs)))
    evaluator = evaluate.Evaluator(mlp, None)
    accuracy = evaluator(splits, "test", 100)
    assert evaluator._folded is None  # pylint: disable=protected-access
    correct = total = 0
    for batch in pipeline.eval_batches(splits, "test", 100):
        correct += int((mlp(batch["image"]).numpy().argmax(1) == batch["label"].numpy()).sum())
        total += len(batch["label"])
    assert accuracy.sa == pytest.approx(100.0 * correct / total) and total == accuracy.count


def test_folding_under_mixed_precision(trained_resnet):
    from dwlt_tf import train  # pylint: disable=import-outside-toplevel
    source, splits = trained_resnet
    with train.precision_policy("mixed_bfloat16"):
        model = pruning_wrapper.wrap(models.build_resnet("resnet18", 5, "cifar",
                                                         *splits.spec.mean_std, base_width=8))
        model.set_weights(source.get_weights())
        folded = folding.FoldedModel(model)
    images, _, _ = _test_images(splits)
    agree = np.mean(folded(images).numpy().argmax(1) == model(images).numpy().argmax(1))
    assert agree >= 0.99  # bfloat16 rounds differently in the folded kernels
