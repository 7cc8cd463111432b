"""Tests for dwlt_tf.audit: worst case over attacks, eps-ball, gradient-masking flags."""
import numpy as np
import pytest
import tensorflow as tf

from dwlt_tf import attacks, audit, errors

SIZE = 16
EPS = 8 / 255
PGD = attacks.Attack(EPS, 2 / 255, 10)
SPEC = audit.AuditSpec(apgd_steps=20, square_queries=200, batch_size=64)


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


def test_normal_model_is_broken_by_every_attack_and_not_flagged():
    images, labels = _data()
    result, adversarial = audit.run(_Linear(), images, labels, 3, SPEC, PGD)
    assert result.sa == 100.0
    assert result.ra == {"pgd": 0.0, "apgd_ce": 0.0, "apgd_dlr": 0.0, "square": 0.0}
    assert result.worst_case_ra == 0.0 and not result.gradient_masking_suspected
    for name, adv in adversarial.items():  # inside the eps-ball and [0, 1]
        assert np.abs(adv - images).max() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def test_gradient_masking_model_is_flagged():
    images, labels = _data()
    result, adversarial = audit.run(_Linear(quantized=True), images, labels, 3, SPEC, PGD)
    assert result.sa == 100.0
    # No gradient: every white-box attack fails; the black-box one does not.
    assert min(result.ra[n] for n in audit.WHITE_BOX) == 100.0
    assert result.ra["square"] < 50.0
    assert result.worst_case_ra <= min(result.ra.values())
    assert result.black_box_only > audit.BLACK_BOX_ONLY_THRESHOLD
    assert result.gradient_masking_suspected and "black-box Square" in result.reasons[0]
    assert "points below PGD-10" in result.reasons[1]
    for name, adv in adversarial.items():
        assert np.abs(adv - images).max() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def test_worst_case_is_per_example_and_never_above_any_attack():
    images, labels = _data(20)
    model = _Linear()
    # A weaker eps than the margin: most examples survive, some attacks may differ.
    spec = audit.AuditSpec(eps=0.6 * EPS, apgd_steps=10, square_queries=50, batch_size=64)
    result, _ = audit.run(model, images, labels, 3, spec, PGD)
    assert result.eps == pytest.approx(0.6 * EPS)
    assert all(result.worst_case_ra <= ra for ra in result.ra.values())


@pytest.mark.parametrize("kwargs,match", [
    (dict(eps=1.5), r"audit.eps=1.5: must be in \[0, 1\]"),
    (dict(eps=-0.1), r"audit.eps=-0.1"),
    (dict(apgd_steps=0), r"audit.apgd_steps=0: must be a positive int"),
    (dict(examples=-1), r"audit.examples=-1"),
])
def test_bad_audit_settings_are_named(kwargs, match):
    with pytest.raises(errors.ConfigError, match=match):
        audit.AuditSpec(**kwargs)
