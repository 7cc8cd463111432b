"""L-infinity PGD and FGSM-with-random-start through CleverHans, with the reference presets.

`pgd_attack` is CleverHans's `projected_gradient_descent` loop -- random start in the
eps-ball, then `nb_iter` fast-gradient steps (CleverHans's `compute_gradient` and
`optimize_linear`: the sign of the input gradient of the cross-entropy on the model's
logits), each projected back with CleverHans's `clip_eta` and clipped to [0, 1] -- with
changes that the engine needs:

* the random start can come from the caller (`noise` in [-1, 1], scaled by eps), so
  training and evaluation are deterministic, independent of the replica count and
  identical after a resume (the input pipeline draws it per example; see `data.py`);
* CleverHans's gradient is called through its Python body, not its `tf.function`:
  nested inside `strategy.run`, a tf.function turns any cross-replica synchronization
  in the model (synchronized BatchNorm) into a "merge_call called while defining a new
  graph" error. The attack always runs inside a tf.function of ours instead (the
  training step, or one compiled per model for eager callers);
* a step larger than eps is allowed, which FGSM with random start (Wong et al. 2020,
  step 1.25 eps) needs and CleverHans's PGD asserts against.

For steps <= eps the result equals `projected_gradient_descent(..., rand_init=False)`
started from the same point (tested).

BatchNorm during attack generation: the reference (advertorch under `model.train()`)
crafts training-time adversaries in training mode, so BN uses batch statistics and
updates its running statistics at every attack iteration; evaluation attacks run under
`model.eval()`. `training` selects the same behaviour here (the training loop passes
True, evaluation False). No other state changes: weights, pruning masks and TF-MOT's
pruning step are untouched.
"""
import dataclasses
import weakref

import numpy as np

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
from cleverhans.tf2.utils import clip_eta, compute_gradient, optimize_linear


@dataclasses.dataclass(frozen=True)
class Attack:
    """An L-inf attack budget in [0, 1] pixel units."""
    eps: float
    step_size: float
    steps: int
    random_start: bool = True

    def __post_init__(self):
        validate(self.eps, self.step_size, self.steps)


def validate(eps, step_size, steps):
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be a float in [0, 1] (pixel units), got {eps!r}")
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or step_size <= 0:
        raise ValueError(f"step_size must be a positive float, got {step_size!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")


# The reference's settings (Double-Win-LTH main_adv*.py), eps and steps in [0, 1] units.
PRESETS = {
    "pgd10_train": Attack(8 / 255, 2 / 255, 10),   # adversarial transfer
    "pgd20_eval": Attack(8 / 255, 2 / 255, 20),    # robust accuracy (RA)
    "pgd3_imp": Attack(8 / 255, 16 / (3 * 255), 3),  # adversarial IMP on ImageNet
    "fgsm_rs": Attack(8 / 255, 10 / 255, 1),       # fast adversarial training (1.25 eps)
}


def preset(name):
    if name not in PRESETS:
        raise ValueError(f"Unknown attack preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


_input_gradient = compute_gradient.python_function


def _pgd(model_fn, images, labels, eps, step_size, steps, random_start, noise):
    images = tf.convert_to_tensor(images, tf.float32)
    if random_start:
        if noise is None:
            noise = tf.random.uniform(tf.shape(images), -1.0, 1.0)
        eta = clip_eta(tf.cast(noise, tf.float32) * eps, np.inf, eps)
        adv = tf.clip_by_value(images + eta, 0.0, 1.0)
    else:
        adv = images

    for _ in range(steps):
        # CleverHans's fast_gradient_method (L-inf, clipped to [0, 1]), step by step.
        grad = _input_gradient(model_fn, tf.nn.sparse_softmax_cross_entropy_with_logits,
                               adv, labels, False)
        adv = tf.clip_by_value(adv + optimize_linear(grad, step_size, np.inf), 0.0, 1.0)
        eta = clip_eta(adv - images, np.inf, eps)
        adv = tf.clip_by_value(images + eta, 0.0, 1.0)
    return tf.stop_gradient(adv)


# Eager callers get one compiled attack per (model, settings): CleverHans's
# `compute_gradient` is a tf.function keyed by the model function, so calling it with a
# fresh closure each time would retrace the model on every call. The compiled functions
# reach their model through a weak reference only: a value holding the model itself
# would keep its WeakKeyDictionary key -- and every model ever attacked -- alive.
_COMPILED = weakref.WeakKeyDictionary()


def _compiled(model, training, eps, step_size, steps, random_start, with_noise):
    per_model = _COMPILED.setdefault(model, {})
    key = (bool(training), float(eps), float(step_size), int(steps), bool(random_start),
           with_noise)
    if key not in per_model:
        model_ref = weakref.ref(model)

        def model_fn(x):
            return model_ref()(x, training=training)
        spec = tf.TensorSpec([None, None, None, 3], tf.float32)
        label_spec = tf.TensorSpec([None], tf.int64)
        if with_noise:
            fn = tf.function(lambda x, y, n: _pgd(model_fn, x, y, eps, step_size, steps,
                                                  random_start, n),
                             input_signature=[spec, label_spec, spec])
        else:
            fn = tf.function(lambda x, y: _pgd(model_fn, x, y, eps, step_size, steps,
                                               random_start, None),
                             input_signature=[spec, label_spec])
        per_model[key] = fn
    return per_model[key]


def pgd_attack(model, images, labels, eps, step_size, steps, random_start=True,
               noise=None, training=False):
    """L-inf PGD adversarial examples (NHWC float32 in [0, 1]).

    Args:
      model: a Keras model returning logits.
      images: float32 [N, H, W, 3] in [0, 1].
      labels: int [N] true labels (the attack maximizes their cross-entropy).
      eps, step_size: Python floats in [0, 1] pixel units (reach tf.function as
        constants); steps: number of iterations (1 with step 1.25 eps = FGSM-RS).
      random_start: start uniformly in the eps-ball (else at the clean image).
      noise: optional [-1, 1] tensor shaped like `images` giving the random start.
      training: run the model in training mode (BatchNorm batch statistics and running
        statistic updates, as the reference's training-time attacks).
    """
    validate(eps, step_size, steps)
    labels = tf.cast(labels, tf.int64)
    if tf.executing_eagerly():
        fn = _compiled(model, training, eps, step_size, steps, random_start, noise is not None)
        args = (images, labels) if noise is None else (images, labels, noise)
        return fn(*[tf.convert_to_tensor(a, tf.float32) if i != 1 else a
                    for i, a in enumerate(args)])
    return _pgd(lambda x: model(x, training=training), images, labels, eps, step_size,
                steps, random_start, noise)


def attack_batch(model, attack: Attack, images, labels, noise=None, training=False):
    """`pgd_attack` with an `Attack` (preset) instead of separate numbers."""
    return pgd_attack(model, images, labels, attack.eps, attack.step_size, attack.steps,
                      attack.random_start, noise, training)
