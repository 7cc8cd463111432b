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
  step 1.25 eps) needs and CleverHans's PGD asserts against;
* under float16 compute (`mixed_float16`) the loss is scaled by a power of two before
  the input gradient is taken (`scaled_cross_entropy`): the cross-entropy's gradient
  of a confident example (softmax - onehot, ~1e-8) underflows in float16 as it is
  back-propagated, `sign(0) = 0` and PGD stalls exactly on the examples the model is
  good at, overstating RA. Only the gradient's sign is used, and multiplying by a power
  of two is exact in floating point, so the scaling changes nothing else.

For steps <= eps the result equals `projected_gradient_descent(..., rand_init=False)`
started from the same point (tested).

BatchNorm during attack generation: the reference (advertorch under `model.train()`)
crafts training-time adversaries in training mode, so BN uses batch statistics and
updates its running statistics at every attack iteration; evaluation attacks run under
`model.eval()`. `training` selects the same behaviour here (the training loop passes
True, evaluation False). No other state changes: weights, pruning masks and TF-MOT's
pruning step are untouched.
"""
import contextlib
import dataclasses
import weakref

import numpy as np

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
from cleverhans.tf2.utils import clip_eta, compute_gradient, optimize_linear

from dwlt_tf import checks, runtime


@dataclasses.dataclass(frozen=True)
class Attack:
    """An L-inf attack budget in [0, 1] pixel units."""
    eps: float
    step_size: float
    steps: int
    random_start: bool = True

    def __post_init__(self):
        validate(self.eps, self.step_size, self.steps, self.random_start)


def validate(eps, step_size, steps, random_start=True):
    """Raises errors.ConfigError ("attack.eps=8: ...") for a budget that cannot be used."""
    checks.number("attack.eps", eps, 0.0, 1.0)  # pixel units, as the models' inputs
    checks.number("attack.step_size", step_size, 0.0, low_open=True)
    checks.positive_int("attack.steps", steps)
    checks.boolean("attack.random_start", random_start)


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


def _power_of_two_at_or_below(x):
    """2**floor(log2(x)) for positive finite float32 x (1 elsewhere), built exactly."""
    exponent = tf.math.floor(tf.math.log(x) / np.log(2.0))
    exponent = tf.where(tf.math.is_finite(exponent), exponent, 0.0)
    exponent = tf.cast(tf.clip_by_value(exponent, -120.0, 120.0), tf.int32)
    return tf.bitcast(tf.bitwise.left_shift(exponent + 127, 23), tf.float32)


def scaled_cross_entropy(per_example):
    """A cross-entropy whose gradient at the logits is scaled by powers of two to ~1.

    The scale makes the largest |softmax - onehot| entry land in [1, 2) -- per example
    when `per_example` (inference mode: examples are independent, so every example's
    input gradient keeps its direction), else one scale for the batch (training mode:
    BatchNorm's batch statistics mix the examples' gradients, so only a common factor
    keeps the summed loss's gradient direction). Powers of two keep every float op
    exact, so where nothing underflows the gradient's sign equals the unscaled one.
    """
    def loss_fn(labels, logits):
        logits = tf.cast(logits, tf.float32)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        logit_grad = tf.nn.softmax(logits) - tf.one_hot(labels, tf.shape(logits)[-1])
        largest = tf.reduce_max(tf.abs(logit_grad), axis=-1)
        if not per_example:
            largest = tf.reduce_max(largest)
        scale = tf.stop_gradient(1.0 / _power_of_two_at_or_below(largest))
        return loss * scale
    return loss_fn


def _pgd(model_fn, images, labels, eps, step_size, steps, random_start, noise,
         loss_fn=tf.nn.sparse_softmax_cross_entropy_with_logits):
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
        grad = _input_gradient(model_fn, loss_fn, adv, labels, False)
        adv = tf.clip_by_value(adv + optimize_linear(grad, step_size, np.inf), 0.0, 1.0)
        eta = clip_eta(adv - images, np.inf, eps)
        adv = tf.clip_by_value(images + eta, 0.0, 1.0)
    return tf.stop_gradient(adv)


def _attack(model, images, labels, eps, step_size, steps, random_start, noise, training,
            scale_loss, snapshot):
    loss_fn = (scaled_cross_entropy(per_example=not training) if scale_loss
               else tf.nn.sparse_softmax_cross_entropy_with_logits)
    # The weights do not change during the attack: the engine's `snapshot` (e.g.
    # `pruning_wrapper.kernel_snapshot`) prepares them once for every iteration.
    with (snapshot or _no_snapshot)(model):
        return _pgd(lambda x: model(x, training=training), images, labels, eps, step_size,
                    steps, random_start, noise, loss_fn)


def _no_snapshot(model):
    del model
    return contextlib.nullcontext()


# Eager callers get one compiled attack per (model, settings): CleverHans's
# `compute_gradient` is a tf.function keyed by the model function, so calling it with a
# fresh closure each time would retrace the model on every call. The compiled functions
# reach their model through a weak reference only: a value holding the model itself
# would keep its WeakKeyDictionary key -- and every model ever attacked -- alive.
_COMPILED = weakref.WeakKeyDictionary()


def _compiled(model, *settings, with_noise, jit_compile):
    per_model = _COMPILED.setdefault(model, {})
    key = (settings, with_noise, jit_compile)
    if key not in per_model:
        model_ref = weakref.ref(model)
        eps, step_size, steps, random_start, training, scale_loss, snapshot = settings

        def attack(x, y, n=None):
            return _attack(model_ref(), x, y, eps, step_size, steps, random_start, n,
                           training, scale_loss, snapshot)
        spec = tf.TensorSpec([None, None, None, 3], tf.float32)
        label_spec = tf.TensorSpec([None], tf.int64)
        signature = [spec, label_spec] + ([spec] if with_noise else [])
        per_model[key] = tf.function(attack, input_signature=signature,
                                     jit_compile=jit_compile)
    return per_model[key]


def pgd_attack(model, images, labels, eps, step_size, steps, random_start=True,
               noise=None, training=False, scale_loss=False, snapshot=None):
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
      scale_loss: scale the loss by powers of two so float16 input gradients cannot
        underflow (`scaled_cross_entropy`): the engine passes True for models computing
        in float16 (`mixed_float16`).
      snapshot: `snapshot(model)` -> a context within which the model runs on weights
        prepared once for the whole attack (the engine passes
        `pruning_wrapper.kernel_snapshot`: masked kernels computed once); None: none.
    """
    validate(eps, step_size, steps)
    labels = tf.cast(labels, tf.int64)
    if tf.executing_eagerly():
        settings = (float(eps), float(step_size), int(steps), bool(random_start),
                    bool(training), scale_loss, snapshot)
        fn = _compiled(model, *settings, with_noise=noise is not None,
                       jit_compile=runtime.jit_compile())
        args = [tf.convert_to_tensor(images, tf.float32), labels]
        if noise is not None:
            args.append(tf.convert_to_tensor(noise, tf.float32))
        return fn(*args)
    return _attack(model, images, labels, eps, step_size, steps, random_start, noise,
                   training, scale_loss, snapshot)


def attack_batch(model, attack: Attack, images, labels, noise=None, training=False,
                 scale_loss=False, snapshot=None):
    """`pgd_attack` with an `Attack` (preset) instead of separate numbers."""
    return pgd_attack(model, images, labels, attack.eps, attack.step_size, attack.steps,
                      attack.random_start, noise, training, scale_loss, snapshot)
