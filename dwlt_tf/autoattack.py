"""AutoAttack's attacks (Croce & Hein, ICML 2020) in TensorFlow, for the robustness audit.

AutoAttack's standard version -- the RobustBench protocol -- runs, each only on the
examples every earlier attack left correctly classified:

* APGD-CE: untargeted APGD on the cross-entropy, 100 iterations;
* APGD-T: APGD on the targeted DLR loss, 100 iterations, for each of the 9 classes with
  the highest clean logits other than the true one (classes - 1 when fewer);
* FAB-T: the targeted fast adaptive boundary attack, 100 iterations, 9 target classes;
* Square: the black-box Square attack, 5,000 queries, p_init 0.8.

All four are implemented here, from the papers and AutoAttack's settings, because IBM's
Adversarial Robustness Toolbox (ART 1.20, used by earlier versions of this audit) does
not do the job: it has no FAB and no targeted DLR loss; its APGD returns the last
iterate, keeping it only if it is misclassified -- an example broken at iteration 40 and
"recovered" at 100 counts as robust, where AutoAttack keeps any iterate that
misclassifies; its Square makes three forward passes per query (AutoAttack's one: at
5,000 queries, 3x the audit's cost); and its TensorFlowV2Classifier runs `predict` on the
whole array at once, which at 224 px does not fit in memory. Here an example is broken
as soon as any iterate inside the eps-ball misclassifies it (best-iterate bookkeeping).

Every function takes numpy images in [0, 1] and integer labels of one batch (the audit
streams batches, so memory does not grow with the audited split) and a model callable
`model(x, training=False) -> logits`. Attacks run in inference mode, L-inf.
"""
import math
import weakref

import numpy as np

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf

APGD_RHO = 0.75        # step-size halving: fewer than rho of the steps since the last
APGD_MOMENTUM = 0.75   # checkpoint improved the loss; momentum of the update
FAB_ALPHA_MAX, FAB_ETA, FAB_BETA = 0.1, 1.05, 0.9  # AutoAttack's FAB-T settings


# --------------------------------------------------------------------- losses

def cross_entropy(logits, labels, target=None):
    del target
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def targeted_dlr(logits, labels, target):
    """-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2): AutoAttack's targeted DLR loss
    (needs 4 classes or more; see `targeted_loss`)."""
    ordered = tf.sort(logits, axis=-1, direction="DESCENDING")
    z_y = tf.gather(logits, labels, batch_dims=1)
    z_t = tf.gather(logits, target, batch_dims=1)
    scale = ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12
    return -(z_y - z_t) / scale


def targeted_ce(logits, labels, target):
    del labels
    return -tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=logits)


def targeted_loss(num_classes):
    """The targeted DLR loss; with fewer than 4 classes (it compares the top 4 logits),
    the targeted cross-entropy."""
    return (targeted_dlr, "dlr-targeted") if num_classes >= 4 else (targeted_ce, "ce-targeted")


_GRADIENTS = weakref.WeakKeyDictionary()


def _loss_and_gradient(model, loss_fn):
    """A compiled (x, y, target) -> (logits, per-example loss, input gradient) of `model`;
    one per (model, loss). Examples are independent in inference mode, so the gradient
    of the summed loss holds each example's own gradient."""
    per_model = _GRADIENTS.setdefault(model, {})
    if loss_fn not in per_model:
        model_ref = weakref.ref(model)

        # autograph=False: straight-line code; autograph would convert the weakref
        # call and mistake a plain callable object's class for the function to call.
        @tf.function(reduce_retracing=True, autograph=False)
        def compute(x, y, t):
            with tf.GradientTape() as tape:
                tape.watch(x)
                logits = tf.cast(model_ref()(x, training=False), tf.float32)
                loss = loss_fn(logits, y, t)
                total = tf.reduce_sum(loss)
            return logits, loss, tape.gradient(total, x)
        per_model[loss_fn] = compute
    return per_model[loss_fn]


_FORWARD = weakref.WeakKeyDictionary()


def forward(model):
    """`model`'s logits as one compiled function (x, training=False) -> float32 logits: the
    attacks query the model thousands of times, eager calls would dominate."""
    if model not in _FORWARD:
        model_ref = weakref.ref(model)

        @tf.function(reduce_retracing=True, autograph=False)  # (as above)
        def compiled(x):
            return tf.cast(model_ref()(x, training=False), tf.float32)

        def call(x, training=False):
            del training  # inference mode only
            return compiled(tf.convert_to_tensor(x, tf.float32))
        _FORWARD[model] = call
    return _FORWARD[model]


def predict(model, x, batch_size=256):
    """Predicted classes of numpy images, `batch_size` at a time."""
    logits_of = forward(model)
    out = [np.argmax(logits_of(x[i:i + batch_size]).numpy(), 1)
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros([0], np.int64)


def target_classes(logits, labels, count):
    """For each example, its `count` classes with the highest logits, never its label."""
    logits = np.array(logits, np.float64)
    logits[np.arange(len(labels)), labels] = -np.inf
    return np.argsort(-logits, axis=1, kind="stable")[:, :count]


# ----------------------------------------------------------------------- APGD

def _checkpoints(steps):
    """APGD's checkpoints: p_0 = 0, p_1 = 0.22, p_j+1 = p_j + max(p_j - p_j-1 - 0.03, 0.06)."""
    points = [0.0, 0.22]
    while points[-1] < 1:
        points.append(points[-1] + max(points[-1] - points[-2] - 0.03, 0.06))
    return sorted({int(math.ceil(p * steps)) for p in points if p <= 1})[1:]


def apgd(model, x, y, eps, steps, loss_fn=cross_entropy, target=None, seed=0):
    """APGD (L-inf) on numpy images `x` with labels `y`. Returns (adversarial images,
    broken mask): broken where some iterate was misclassified (that iterate is returned),
    else the iterate of the highest loss."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int64)
    t = y if target is None else np.asarray(target, np.int64)
    compute = _loss_and_gradient(model, loss_fn)
    rng = np.random.default_rng(seed)
    start = rng.uniform(-1, 1, x.shape).astype(np.float32)
    start /= np.maximum(np.abs(start).reshape(len(x), -1).max(1), 1e-12).reshape(
        (-1,) + (1,) * (x.ndim - 1))

    def project(z):
        return np.clip(np.clip(z, x - eps, x + eps), 0.0, 1.0)

    def evaluate(z):
        logits, loss, grad = compute(tf.constant(z), tf.constant(y), tf.constant(t))
        return logits.numpy(), loss.numpy(), grad.numpy()

    shape = (-1,) + (1,) * (x.ndim - 1)
    x_adv = project(x + eps * start)
    logits, loss, grad = evaluate(x_adv)
    broken = np.argmax(logits, 1) != y
    x_broken = x_adv.copy()
    x_best, loss_best, grad_best = x_adv.copy(), loss.copy(), grad.copy()
    step = np.full(len(x), 2.0 * eps, np.float32)
    x_prev = x_adv.copy()
    checkpoints = _checkpoints(steps)
    improved = np.zeros(len(x))
    loss_at_checkpoint, step_at_checkpoint, last = loss_best.copy(), step.copy(), 0
    for i in range(steps):
        z = project(x_adv + step.reshape(shape) * np.sign(grad))
        momentum = 1.0 if i == 0 else APGD_MOMENTUM
        x_new = project(x_adv + momentum * (z - x_adv) + (1 - momentum) * (x_adv - x_prev))
        x_prev, x_adv = x_adv, x_new
        logits, loss, grad = evaluate(x_adv)
        wrong = np.argmax(logits, 1) != y
        x_broken[wrong] = x_adv[wrong]  # any misclassified iterate breaks the example
        broken |= wrong
        better = loss > loss_best
        improved += better
        x_best[better], loss_best[better], grad_best[better] = (x_adv[better], loss[better],
                                                                 grad[better])
        if i + 1 in checkpoints:
            span = i + 1 - last
            halve = (improved < APGD_RHO * span) | (
                (step == step_at_checkpoint) & (loss_best == loss_at_checkpoint))
            step_at_checkpoint, loss_at_checkpoint = step.copy(), loss_best.copy()
            step[halve] /= 2.0
            x_adv[halve], grad[halve] = x_best[halve], grad_best[halve]  # restart at the best
            improved[:], last = 0, i + 1
    out = np.where(broken.reshape(shape), x_broken, x_best)
    return out, broken


# ------------------------------------------------------------------------ FAB

def linf_projection(points, w, c):
    """For each row: the delta of least L-inf norm with w . delta = c and 0 <= points +
    delta <= 1 (when no delta in the box reaches c, the one reaching closest).

    With |delta_i| <= s, the most w . delta can move toward c is sum_i |w_i| min(s, u_i),
    u_i the room in the box in direction sign(c w_i): piecewise linear in s; the least s
    reaching |c| is found by sorting u."""
    p = points.reshape(len(points), -1).astype(np.float64)
    w = w.reshape(len(points), -1).astype(np.float64)
    c = np.asarray(c, np.float64)
    direction = np.sign(w) * np.sign(c)[:, None]
    room = np.where(direction > 0, 1.0 - p, p)
    room = np.where(direction == 0, 0.0, room)
    a = np.abs(w)
    order = np.argsort(room, axis=1)
    u = np.take_along_axis(room, order, 1)
    a_sorted = np.take_along_axis(a, order, 1)
    # Reach at s = u_k: sum_{j<k} a_j u_j + u_k * sum_{j>=k} a_j.
    done = np.cumsum(a_sorted * u, 1) - a_sorted * u
    rest = np.cumsum(a_sorted[:, ::-1], 1)[:, ::-1]
    reach = done + u * rest
    need = np.abs(c)
    k = np.argmax(reach >= need[:, None], axis=1)
    feasible = reach[np.arange(len(p)), -1] >= need
    before = np.where(k > 0, reach[np.arange(len(p)), np.maximum(k - 1, 0)], 0.0)
    u_before = np.where(k > 0, u[np.arange(len(p)), np.maximum(k - 1, 0)], 0.0)
    rest_k = rest[np.arange(len(p)), k]
    s = np.where(rest_k > 0, u_before + (need - before) / np.maximum(rest_k, 1e-30), u_before)
    s = np.where(feasible, s, np.inf)
    delta = direction * np.minimum(s[:, None], room)
    return delta.reshape(points.shape).astype(np.float32)


def _difference_margin(logits, y, target):
    """g = z_y - z_t: FAB-T's boundary with the target (a `loss_fn` for the gradients)."""
    return tf.gather(logits, y, batch_dims=1) - tf.gather(logits, target, batch_dims=1)


def _difference(model, x, y, target):
    """g = z_y - z_t at x and its input gradient (the linearized boundary with t)."""
    compute = _loss_and_gradient(model, _difference_margin)
    _, g, grad = compute(tf.constant(x), tf.constant(y), tf.constant(target))
    return g.numpy(), grad.numpy()


def fab_targeted(model, x, y, eps, steps, target):
    """FAB-T (L-inf; AutoAttack's settings, first restart: no random start). Returns
    (adversarial images, broken mask): broken where an iterate within eps of `x` is
    misclassified (the one nearest to `x` is returned)."""
    x0 = np.asarray(x, np.float32)
    y = np.asarray(y, np.int64)
    t = np.asarray(target, np.int64)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    x1, best = x0.copy(), x0.copy()
    best_norm = np.full(len(x0), np.inf)
    for _ in range(steps):
        g, grad = _difference(model, x1, y, t)
        # Boundary g(z) = 0 linearized at x1: grad . (z - x1) = -g.
        c_here = -g
        c_origin = -g - (grad * (x0 - x1)).reshape(len(x0), -1).sum(1)
        d1 = linf_projection(x1, grad, c_here)
        d2 = linf_projection(x0, grad, c_origin)
        n1 = np.abs(d1).reshape(len(x0), -1).max(1)
        n2 = np.abs(d2).reshape(len(x0), -1).max(1)
        alpha = np.clip(n1 / np.maximum(n1 + n2, 1e-12), 0.0, FAB_ALPHA_MAX).reshape(shape)
        x1 = np.clip((x1 + FAB_ETA * d1) * (1 - alpha) + (x0 + FAB_ETA * d2) * alpha, 0.0, 1.0)
        x1 = np.nan_to_num(x1, nan=0.0).astype(np.float32)
        adversarial = predict(model, x1) != y
        norm = np.abs(x1 - x0).reshape(len(x0), -1).max(1)
        closer = adversarial & (norm < best_norm)
        best[closer], best_norm[closer] = x1[closer], norm[closer]
        # A successful step goes back toward the original (the boundary's near side).
        x1[adversarial] = ((x1 - x0) * FAB_BETA + x0)[adversarial]
    broken = best_norm <= eps + 1e-6
    out = np.where(broken.reshape(shape), np.clip(best, x0 - eps, x0 + eps), x0)
    # Clipping into the ball can undo a success found just outside it: check.
    broken &= predict(model, out) != y
    return out.astype(np.float32), broken


# --------------------------------------------------------------------- Square

def _p_selection(p_init, iteration, queries):
    """Square's schedule of the square's area: p_init halved at fixed fractions of the
    budget (AutoAttack's schedule, written for 10,000 queries, rescaled)."""
    it = int(iteration / queries * 10000)
    for bound, divisor in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32),
                           (4000, 64), (6000, 128), (8000, 256)):
        if it <= bound:
            return p_init / divisor
    return p_init / 512


def _margin(logits, y):
    """z_y - max_{i != y} z_i: negative where misclassified (Square's margin loss)."""
    true = logits[np.arange(len(y)), y]
    others = logits.copy()
    others[np.arange(len(y)), y] = -np.inf
    return true - others.max(1)


def square(model, x, y, eps, queries, p_init=0.8, seed=0):
    """The L-inf Square attack (Andriushchenko et al. 2020) as AutoAttack runs it: random
    vertical stripes, then `queries - 1` random squares (one position and one sign per
    channel for the batch at each query, each example keeping it only if its margin
    drops), the square's area shrinking on `_p_selection`'s schedule; one forward pass per
    query. Returns (adversarial images, broken mask)."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int64)
    logits_of = forward(model)
    rng = np.random.default_rng(seed)
    n, height, width, channels = x.shape
    stripes = eps * rng.choice([-1.0, 1.0], size=(n, 1, width, channels)).astype(np.float32)
    best = np.clip(x + stripes, 0.0, 1.0)
    margin = _margin(logits_of(best).numpy(), y)
    for query in range(queries - 1):
        todo = np.flatnonzero(margin > 0)
        if not len(todo):
            break
        side = max(int(round(math.sqrt(_p_selection(p_init, query, queries) * height * width))),
                   1)
        side = min(side, height - 1)
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        delta = np.zeros((height, width, channels), np.float32)
        delta[top:top + side, left:left + side, :] = 2 * eps * rng.choice(
            [-1.0, 1.0], size=(1, 1, channels))
        candidate = np.clip(np.clip(best[todo] + delta, x[todo] - eps, x[todo] + eps), 0.0, 1.0)
        new = _margin(logits_of(candidate).numpy(), y[todo])
        better = new < margin[todo]
        best[todo[better]], margin[todo[better]] = candidate[better], new[better]
    return best, margin <= 0
