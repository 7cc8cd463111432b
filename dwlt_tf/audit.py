"""Robustness audit: is an RA real, or is the gradient masked?

RA in this project is measured with the PGD that training uses (PGD-20 by default). A
reviewer asks whether a stronger or different attack breaks the model where PGD did not.
`audit` runs, on the same examples at the same eps, with IBM's Adversarial Robustness
Toolbox (ART; `pip install '.[audit]'`):

* `pgd`: the run's own evaluation attack (CleverHans PGD, `attacks.py`), for reference;
* `apgd_ce`, `apgd_dlr`: AutoAttack's white-box pair, APGD on the cross-entropy and on
  the difference-of-logits-ratio loss (>= 100 iterations by default);
* `square`: the black-box Square attack with a query budget (`square_queries`).

An example counts as robust only if every attack leaves it correctly classified: the
per-example worst case, whose RA is never above any single attack's. Possible gradient
masking is flagged when the black-box attack succeeds where every white-box attack failed
on >= 1 % of the examples, or when the worst-case RA is more than 10 points below PGD's.
All attacks are L-inf, stay inside the eps-ball and [0, 1] (checked), and run the model in
inference mode; randomness is seeded (`AuditSpec.seed`).
"""
import dataclasses
from typing import Callable, Dict, List, Optional

import numpy as np

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tf_keras

from dwlt_tf import attacks, checks, errors, folding, identity, pipeline, runs

ATTACKS = ("pgd", "apgd_ce", "apgd_dlr", "square")
WHITE_BOX = ("pgd", "apgd_ce", "apgd_dlr")
BLACK_BOX_ONLY_THRESHOLD = 1.0   # percent of examples
WORST_CASE_GAP_THRESHOLD = 10.0  # points of RA


@dataclasses.dataclass(frozen=True)
class AuditSpec:
    """How hard to audit (the `audit` section of a study config, the audit binary's flags).

    eps: L-inf budget in [0, 1]; None = the evaluation eps of the audited run.
    apgd_steps: iterations of each APGD attack. square_queries: Square's query budget.
    examples: audit the first N examples of the split (0: all).
    """
    eps: Optional[float] = None
    apgd_steps: int = 100
    square_queries: int = 1000
    examples: int = 0
    seed: int = 0
    batch_size: int = identity.neutral(250)

    def __post_init__(self):
        if self.eps is not None:
            checks.number("audit.eps", self.eps, 0.0, 1.0)  # pixel units
        for key in ("apgd_steps", "square_queries", "batch_size"):
            checks.positive_int(f"audit.{key}", getattr(self, key))
        checks.non_negative_int("audit.examples", self.examples)
        checks.seed("audit.seed", self.seed)


@dataclasses.dataclass
class AuditResult:
    """RA per attack and the per-example worst case, in percent, on `examples` examples."""
    split: str
    examples: int
    eps: float
    sa: float
    ra: Dict[str, float]
    worst_case_ra: float
    black_box_only: float         # % robust to every white-box attack, broken by Square
    gradient_masking_suspected: bool
    reasons: List[str]
    attacks: Dict[str, dict]      # how each attack was run

    def to_json(self):
        return dataclasses.asdict(self)


def require_art():
    try:
        from art.attacks import evasion  # pylint: disable=import-outside-toplevel
        from art.estimators import classification  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise errors.ConfigError(
            "the robustness audit needs IBM's Adversarial Robustness Toolbox: "
            "pip install 'dwlt-tf[audit]' (adversarial-robustness-toolbox==1.20.1)") from None
    return evasion, classification


def saved_model_logits(loaded):
    """A callable model(x, training=False) -> logits over a loaded exported SavedModel
    (`export.open_export`)."""
    serve = loaded.signatures["serving_default"]

    def model(images, training=False):
        del training  # a SavedModel serves in inference mode
        return serve(images=tf.convert_to_tensor(images, tf.float32))["logits"]
    return model


def _collect(splits, split, spec, noise_seed):
    """Images, labels and PGD's random-start noise of the audited examples (numpy)."""
    images, labels, noise = [], [], []
    wanted = spec.examples or splits.size(split)
    with_data = pipeline.eval_batches(splits, split, spec.batch_size, seed=noise_seed,
                                      with_noise=True)
    for batch in with_data:
        images.append(batch["image"].numpy())
        labels.append(batch["label"].numpy())
        noise.append(batch["noise"].numpy())
        if sum(len(b) for b in labels) >= wanted:
            break
    return (np.concatenate(images)[:wanted], np.concatenate(labels)[:wanted],
            np.concatenate(noise)[:wanted])


def _predict(model, images, batch_size):
    out = [np.argmax(np.asarray(model(images[i:i + batch_size], training=False)), axis=1)
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out)


def _check_inside(adversarial, images, eps, name):
    """ART and CleverHans both promise it; an audit must not trust what it audits."""
    tolerance = 1e-5
    if adversarial.shape != images.shape:
        raise AssertionError(f"{name}: adversarial batch has shape {adversarial.shape}")
    if np.abs(adversarial - images).max() > eps + tolerance or adversarial.min() < -tolerance \
            or adversarial.max() > 1 + tolerance:
        raise AssertionError(f"{name} left the eps-ball or [0, 1]: max |delta| "
                             f"{np.abs(adversarial - images).max()}, range "
                             f"[{adversarial.min()}, {adversarial.max()}]")


def run(model: Callable, images, labels, num_classes: int, spec: AuditSpec,
        pgd: attacks.Attack, noise=None, split="test"):
    """Audits `model` (callable (x, training=False) -> logits) on numpy `images` in [0, 1]
    with integer `labels`. Returns (AuditResult, {attack: adversarial images})."""
    evasion, classification = require_art()
    eps = float(pgd.eps if spec.eps is None else spec.eps)
    step = pgd.step_size * eps / pgd.eps if pgd.eps else pgd.step_size
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int64)
    size = images.shape[1]
    estimator = classification.TensorFlowV2Classifier(
        model=model, nb_classes=num_classes, input_shape=(size, size, 3),
        loss_object=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0), channels_first=False)
    adversarial, settings = {}, {}
    own = attacks.Attack(eps, step, pgd.steps, pgd.random_start)
    keras_like = _KerasCall(model)
    adversarial["pgd"] = np.concatenate([
        attacks.attack_batch(keras_like, own, images[i:i + spec.batch_size],
                             labels[i:i + spec.batch_size],
                             noise=None if noise is None else noise[i:i + spec.batch_size],
                             training=False).numpy()
        for i in range(0, len(images), spec.batch_size)])
    settings["pgd"] = {"library": "cleverhans", "eps": eps, "step_size": step,
                       "steps": pgd.steps, "restarts": 1, "random_start": pgd.random_start}
    for name, loss in (("apgd_ce", "cross_entropy"), ("apgd_dlr", "difference_logits_ratio")):
        if loss == "difference_logits_ratio" and num_classes < 3:
            continue  # DLR compares the top-3 logits
        np.random.seed(spec.seed)
        attack = evasion.AutoProjectedGradientDescent(
            estimator, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=spec.apgd_steps,
            targeted=False, nb_random_init=1, batch_size=spec.batch_size, loss_type=loss,
            verbose=False)
        adversarial[name] = attack.generate(images, labels).astype(np.float32)
        settings[name] = {"library": "adversarial-robustness-toolbox", "eps": eps,
                          "steps": spec.apgd_steps, "restarts": 1, "loss": loss}
    np.random.seed(spec.seed)
    square = evasion.SquareAttack(estimator, norm=np.inf, eps=eps,
                                  max_iter=spec.square_queries, nb_restarts=1,
                                  batch_size=spec.batch_size, verbose=False)
    adversarial["square"] = square.generate(images, labels).astype(np.float32)
    settings["square"] = {"library": "adversarial-robustness-toolbox", "eps": eps,
                          "queries": spec.square_queries, "restarts": 1}

    clean = _predict(model, images, spec.batch_size) == labels
    robust = {}
    for name, adv in adversarial.items():
        _check_inside(adv, images, eps, name)
        robust[name] = clean & (_predict(model, adv, spec.batch_size) == labels)
    worst = np.logical_and.reduce(list(robust.values()))
    white = np.logical_and.reduce([robust[n] for n in WHITE_BOX if n in robust])
    black_box_only = 100.0 * float(np.mean(white & ~robust["square"]))
    ra = {name: 100.0 * float(np.mean(r)) for name, r in robust.items()}
    worst_ra = 100.0 * float(np.mean(worst))
    reasons = []
    if black_box_only >= BLACK_BOX_ONLY_THRESHOLD:
        reasons.append(f"the black-box Square attack broke {black_box_only:.2f}% of the "
                       "examples that every white-box attack left correctly classified")
    if ra["pgd"] - worst_ra > WORST_CASE_GAP_THRESHOLD:
        reasons.append(f"the worst-case RA ({worst_ra:.2f}%) is {ra['pgd'] - worst_ra:.2f} "
                       f"points below PGD-{pgd.steps}'s ({ra['pgd']:.2f}%)")
    result = AuditResult(split=split, examples=len(images), eps=eps,
                         sa=100.0 * float(np.mean(clean)), ra=ra, worst_case_ra=worst_ra,
                         black_box_only=black_box_only,
                         gradient_masking_suspected=bool(reasons), reasons=reasons,
                         attacks=settings)
    return result, adversarial


class _KerasCall:
    """What attacks.attack_batch needs of a model: __call__(x, training=...)."""

    def __init__(self, model):
        self.model = model
        # A float16 Keras model gets the attack's loss scaling (attacks.computes_in_float16).
        self.compute_dtype = "float16" if attacks.computes_in_float16(model) else "float32"

    def __call__(self, x, training=False):
        return self.model(x, training=training)


def audit_run(run, splits, split, spec: AuditSpec, model=None):
    """The audit of a finished transfer run (`runs.open_run`): its best-RA checkpoint, or
    `model` (e.g. its exported SavedModel, `saved_model_logits`), attacked on `split` with
    the run's own evaluation PGD as the reference attack."""
    attack = run.result.eval_attack
    if not attack:
        raise errors.ConfigError(f"run {run.path!r} measured no RA (no evaluation attack)")
    pgd = attacks.Attack(attack["eps"], attack["step_size"], attack["steps"],
                         attack["random_start"])
    if model is None:
        model, _, _ = runs.load_best(run, "ra", splits)
    return audit_split(model, splits, split, spec, pgd,
                       noise_seed=run.identity["train"].get("seed", 1))


def audit_split(model, splits, split, spec: AuditSpec, pgd: attacks.Attack, noise_seed=1):
    """`run` on the first `spec.examples` (0: all) examples of `split` of `splits`. PGD
    starts where the run's own evaluation started it (`noise_seed` = the run's
    `train.seed`), so with every example its RA is the run's reported one."""
    images, labels, noise = _collect(splits, split, spec, noise_seed)
    if isinstance(model, tf_keras.Model) and folding.conv_batchnorm_pairs(model):
        model = folding.FoldedModel(model)  # inference only: the same verdicts, faster
    result, _ = run(model, images, labels, splits.num_classes, spec, pgd, noise, split)
    return result
