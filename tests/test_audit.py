"""Tests for dwlt_tf.audit and dwlt_tf.autoattack: AutoAttack's sequence, per-example
bookkeeping, gradient-masking flags, agreement with an independent implementation."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from autoattack_reference import bundled
from conftest import REPO
from dwlt_tf import attacks, audit, autoattack, errors, pipeline

SIZE = 16
EPS = 8 / 255
PGD = attacks.Attack(EPS, 2 / 255, 10)


class _Linear:
    """Three classes: logits (s, 0, -5) with s = k * w . (x - 0.5), w = +1 on the left
    half of the image and -1 on the right (spatially smooth, like natural-image models'
    sensitivities: Square's window search finds it; an i.i.d. sign pattern would take it
    thousands of queries). Class 0 when s > 0, class 1 when s < 0; the logits' shape keeps
    the DLR loss monotone in the margin (with (s, -s, c) its denominator grows with s).

    `quantized`: the logits are rounded to 0.1 (forward) with an exactly zero input
    gradient -- the textbook gradient-masking defence: white-box attacks see no slope,
    black-box ones still see the score move.
    """

    def __init__(self, quantized=False):
        sign = np.where(np.arange(SIZE) < SIZE // 2, 1.0, -1.0)
        self.w = tf.constant(np.broadcast_to(sign[None, :, None], (SIZE, SIZE, 3)),
                             tf.float32)
        self.quantized = quantized

    def __call__(self, x, training=False):
        del training
        s = 10.0 / (0.5 * EPS * self.w.shape.num_elements()) * tf.reduce_sum(
            self.w * (tf.convert_to_tensor(x, tf.float32) - 0.5), axis=[1, 2, 3])
        logits = tf.stack([s, tf.zeros_like(s), tf.fill(tf.shape(s), -5.0)], axis=1)
        if self.quantized:
            logits = tf.stop_gradient(tf.round(logits * 10) / 10) + 0.0 * logits
        return logits


def _data(n=40):
    """Correctly classified examples (s = +-3, where the DLR loss is monotone), each
    breakable within eps (eps moves s by up to 20), but not by a random start in the
    eps-ball (moves s by ~0.4)."""
    w = _Linear().w.numpy()
    labels = np.arange(n) % 2
    direction = np.where(labels == 0, 1.0, -1.0)[:, None, None, None]
    images = 0.5 + 0.15 * EPS * direction * w[None]
    images += np.random.default_rng(1).uniform(-0.001, 0.001, images.shape)
    return np.clip(images, 0, 1).astype(np.float32), labels


@pytest.mark.parametrize("version,names", [
    ("standard", ["pgd", "apgd_ce", "apgd_t", "fab_t", "square"]),
    ("fast", ["pgd", "apgd_ce", "apgd_dlr", "square"])])
def test_normal_model_is_broken_and_not_flagged(version, names):
    images, labels = _data()
    spec = audit.AuditSpec(version=version, apgd_steps=20, fab_steps=20, square_queries=200,
                           batch_size=16)  # several batches
    result = audit.run(_Linear(), images, labels, 3, spec, PGD)
    assert result.sa == 100.0 and result.version == version
    assert list(result.ra) == names and set(result.ra.values()) == {0.0}
    assert result.autoattack_ra == result.worst_case_ra == 0.0
    assert not result.gradient_masking_suspected
    assert set(result.attacks) == set(names)


def test_gradient_masking_model_is_flagged():
    images, labels = _data()
    spec = audit.AuditSpec(apgd_steps=20, fab_steps=20, square_queries=200, batch_size=64)
    result = audit.run(_Linear(quantized=True), images, labels, 3, spec, PGD)
    assert result.sa == 100.0
    # No gradient: every white-box attack fails; the black-box one does not.
    assert [result.ra[n] for n in ("pgd", "apgd_ce", "apgd_t", "fab_t")] == [100.0] * 4
    assert result.ra["square"] < 50.0 and result.autoattack_ra == result.ra["square"]
    assert result.black_box_only == 100.0 - result.ra["square"]
    assert result.gradient_masking_suspected and "black-box Square" in result.reasons[0]
    assert "points below PGD-10" in result.reasons[1]


def _breaks(indices, images, name):
    """A stand-in attack breaking exactly the examples `indices` of `images` (for the
    _Linear model: a step across its boundary, inside eps)."""
    w = _Linear().w.numpy()

    def run(x, y, logits):
        del logits
        ids = [int(np.flatnonzero(np.all(images == row, axis=(1, 2, 3)))[0]) for row in x]
        hit = np.isin(ids, indices)
        direction = np.where(y == 0, -1.0, 1.0)[:, None, None, None]
        adv = np.clip(x + hit[:, None, None, None] * 0.99 * EPS * direction * w, 0, 1)
        return adv.astype(np.float32), hit
    return audit.Step(name, run, {"attack": name})


def test_the_worst_case_is_counted_per_example():
    images, labels = _data(20)
    model = _Linear(quantized=True)  # the real PGD breaks nothing here
    steps = [_breaks([0, 1, 2, 3, 4], images, "first"), _breaks([5, 6, 7, 8, 9], images, "second")]
    result = audit.run(model, images, labels, 3, audit.AuditSpec(batch_size=8), PGD,
                       steps=steps)
    # Each attack alone leaves 75 %; example 7 is robust to every attack but the second,
    # and it counts as broken: the worst case is 50 %, below every single attack's RA.
    assert result.ra == {"pgd": 100.0, "first": 75.0, "second": 50.0}
    assert result.autoattack_ra == result.worst_case_ra == 50.0


def test_apgd_keeps_an_earlier_misclassified_iterate():
    """The last iterate is correct, an earlier one was not: broken (ART 1.20 keeps only
    the last iterate and would call the example robust)."""
    images, labels = _data(1)
    wrong = np.eye(3, dtype=np.float32)[1 - labels[0]] - np.eye(3, dtype=np.float32)[labels[0]]

    class Flicker:  # no gradient, correct everywhere -- except at its 6th call
        def __init__(self):
            self.base, self.calls = _Linear(quantized=True), 0

        def _bump(self):
            self.calls += 1
            return np.float32(50.0 if self.calls == 6 else 0.0)

        def __call__(self, x, training=False):
            return self.base(x) + tf.py_function(self._bump, [], tf.float32) * wrong
    model = Flicker()
    adv, broken = autoattack.apgd(model, images, labels, EPS, 20)
    assert model.calls == 21 and broken.tolist() == [True]  # start + 20 iterates
    assert np.abs(adv - images).max() <= EPS + 1e-6
    assert np.argmax(model.base(tf.constant(adv)).numpy(), 1).tolist() == labels.tolist()


def test_targeted_attacks_never_target_the_true_class():
    logits = np.array([[5.0, 9.0, 1.0, 7.0, 3.0],      # true class 0: not even the top one
                       [2.0, 1.0, 8.0, 0.0, 6.0]])
    labels = np.array([0, 2])
    targets = autoattack.target_classes(logits, labels, 4)
    assert targets.tolist() == [[1, 3, 4, 2], [4, 0, 1, 3]]
    assert not (targets == labels[:, None]).any()
    assert autoattack.target_classes(logits, labels, 2).tolist() == [[1, 3], [4, 0]]


def test_the_linf_projection_reaches_the_plane_at_least_norm_inside_the_box():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1, (6, 30)).astype(np.float32)
    w = rng.normal(size=(6, 30)).astype(np.float32)
    c = np.array([0.5, -0.5, 2.0, -1.0, 0.0, 50.0])
    delta = autoattack.linf_projection(points, w, c)
    reached = (w.astype(np.float64) * delta).sum(1)
    np.testing.assert_allclose(reached[:5], c[:5], atol=1e-4)
    assert (points + delta >= -1e-6).all() and (points + delta <= 1 + 1e-6).all()
    # The least norm: every coordinate that could move is at the norm or at the box edge.
    norms = np.abs(delta).max(1)
    for row in range(4):
        moved = np.abs(delta[row]) > 1e-7
        edge = (np.abs(points[row] + delta[row]) < 1e-6) | (np.abs(points[row] + delta[row] - 1)
                                                           < 1e-6)
        assert (np.isclose(np.abs(delta[row][moved]), norms[row], atol=1e-6) | edge[moved]).all()
    # Unreachable (c = 50): as far as the box allows.
    assert reached[5] < 50 and np.isclose(np.abs(delta[5]).max(), 1.0, atol=0.5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(eps=1.5), r"audit.eps=1.5: must be a number in \[0.0, 1.0\]"),
    (dict(eps=-0.1), r"audit.eps=-0.1"),
    (dict(apgd_steps=0), r"audit.apgd_steps=0: must be a positive int"),
    (dict(examples=-1), r"audit.examples=-1"),
    (dict(version="robustbench"), r"audit.version='robustbench': choose one of"),
    (dict(square_p_init=0.0), r"audit.square_p_init=0.0"),
])
def test_bad_audit_settings_are_named(kwargs, match):
    with pytest.raises(errors.ConfigError, match=match):
        audit.AuditSpec(**kwargs)


# ------------------------------------------- against an independent AutoAttack

@pytest.mark.slow  # ~30 min on 2 cores: torchattacks' AutoAttack alone takes ~20
def test_standard_audit_agrees_with_torchattacks_autoattack(tmp_path):
    """The same model (trained in PyTorch by autoattack_reference.py, converted with
    dwlt_tf.convert), the same 500 images: AutoAttack-standard RA within 1.5 points of
    torchattacks' AutoAttack."""
    pytest.importorskip("torchattacks")
    from dwlt_tf import convert  # pylint: disable=import-outside-toplevel
    path = str(tmp_path / "robust.pth")
    reference = subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(__file__), "autoattack_reference.py"),
         path], capture_output=True, text=True, check=False)
    assert reference.returncode == 0, reference.stderr[-3000:]
    theirs = json.loads(reference.stdout.strip().splitlines()[-1])
    keras_model = convert.convert(path, "resnet18", "cifar").model
    images, labels = bundled("test")
    spec = audit.AuditSpec(version="standard", batch_size=125)
    ours = audit.run(keras_model, images, labels, 5, spec, attacks.Attack(EPS, 2 / 255, 10))
    print(f"SA {ours.sa:.2f} (torch {theirs['sa']:.2f}); AutoAttack RA ours "
          f"{ours.autoattack_ra:.2f}, torchattacks {theirs['ra']:.2f} "
          f"({theirs['seconds']} s); per attack {ours.ra}")
    assert abs(ours.sa - theirs["sa"]) <= 0.5  # the converted model is the same model
    assert 5.0 < theirs["ra"] < ours.sa  # something robust to measure
    assert abs(ours.autoattack_ra - theirs["ra"]) <= 1.5


@pytest.mark.slow  # ~4 min on 2 cores: two audits at 224 px, of 200 and 2,000 images
def test_audit_memory_does_not_grow_with_the_split():
    """Every forward and gradient call is batched and the split is streamed: auditing
    10x more images at 224 px needs (almost) no more memory."""
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "audit_memory.py"),
         "--examples=200,2000", "--batch_size=100"],
        capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    print(measured)
    assert [r["examples"] for r in measured["runs"]] == [200, 2000]
    assert measured["rss_growth_mb"] < 150


def test_a_spread_subset_audits_every_class_of_a_class_sorted_split(trained_resnet):
    model, splits = trained_resnet  # an ImageFolder: its 500 test images sorted by class
    labels = np.concatenate([b["label"].numpy()
                             for b in pipeline.eval_batches(splits, "test", 500)])
    first = audit.audited_indices(audit.AuditSpec(examples=25), 500)
    spread = audit.audited_indices(audit.AuditSpec(examples=25, subset="spread"), 500)
    assert np.bincount(labels[first], minlength=5).tolist() == [25, 0, 0, 0, 0]
    assert np.bincount(labels[spread], minlength=5).tolist() == [5, 5, 5, 5, 5]
    assert spread.tolist() == list(range(0, 500, 20))
    # Streamed in batches of 10 (3 of them, the last short), recorded in split order.
    spec = audit.AuditSpec(version="fast", examples=25, subset="spread", apgd_steps=2,
                           square_queries=5, batch_size=10)
    result = audit.audit_split(model, splits, "test", spec, attacks.Attack(EPS, 2 / 255, 2))
    assert result.examples == 25 and result.records.count == 25
    assert result.records.order == splits.example_order("test", indices=spread)
    assert result.records.accuracy("clean") == result.sa
    assert result.records.accuracy("autoattack") == result.autoattack_ra
    with pytest.raises(errors.ConfigError, match=r"audit.subset='random': choose one of"):
        audit.AuditSpec(subset="random")
