"""Robustness audit: is an RA real, or is the gradient masked?

RA in this project is measured with the PGD that training uses (PGD-20 by default). The
audit attacks the same examples at the same eps with AutoAttack (`autoattack.py`):

* `standard` (default): AutoAttack's standard version, the RobustBench protocol --
  APGD-CE (100 iterations), APGD-T (targeted DLR, 100 iterations, 9 target classes or
  classes - 1), FAB-T (targeted, 100 iterations, 9 targets) and Square (5,000 queries,
  p_init 0.8), each on the examples every earlier one left correctly classified;
* `fast` (labelled so everywhere): APGD-CE, untargeted APGD-DLR and Square with
  `square_queries` (1,000 in the quickstart's audit) -- cheaper, weaker.

The run's own PGD is run too, on every example, for reference. Per example: robust to
AutoAttack when no attack of the sequence broke it (any misclassified iterate inside the
eps-ball counts: best-iterate bookkeeping); the worst case is robust to AutoAttack *and*
to PGD. Reported per attack: the RA left after it in the sequence. Possible gradient
masking is flagged when the black-box Square breaks >= 1 % of the examples every
white-box attack left correctly classified, or when the worst-case RA is more than 10
points below PGD's.

Memory does not grow with the audited split: examples are read, attacked and counted
`batch_size` at a time (every forward and gradient call is batched). All attacks run in
inference mode, stay inside the eps-ball and [0, 1] (checked); randomness is seeded
(`AuditSpec.seed`).
"""
import dataclasses
from typing import Callable, Dict, List, Optional

import numpy as np

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tf_keras

from dwlt_tf import (attacks, autoattack, checks, data, errors, folding, identity, pipeline,
                     preemption)
from dwlt_tf import records as records_lib
from dwlt_tf import runs

VERSIONS = ("standard", "fast")
SUBSETS = ("first", "spread")
BLACK_BOX_ONLY_THRESHOLD = 1.0   # percent of examples
WORST_CASE_GAP_THRESHOLD = 10.0  # points of RA
SEQUENCE = {"standard": ("apgd_ce", "apgd_t", "fab_t", "square"),
            "fast": ("apgd_ce", "apgd_dlr", "square")}


@dataclasses.dataclass(frozen=True)
class AuditSpec:
    """How hard to audit (the `audit` section of a study config, the audit binary's flags).

    version: "standard" (AutoAttack's) or "fast". eps: L-inf budget in [0, 1]; None = the
    evaluation eps of the audited run. apgd_steps / fab_steps: iterations. target_classes:
    of APGD-T and FAB-T (fewer when the task has fewer classes). square_queries,
    square_p_init: Square's budget and initial square size. examples: audit N examples of
    the split (0: all); subset: which N -- "first" (the split's first N: a random choice
    for TFDS splits, which TFDS stores shuffled, but one class or two of an ImageFolder,
    whose split is sorted by class) or "spread" (N examples evenly spaced over the split:
    every class of a class-sorted split, in proportion). batch_size: examples attacked
    together (memory).
    """
    version: str = "standard"
    eps: Optional[float] = None
    apgd_steps: int = 100
    fab_steps: int = 100
    target_classes: int = 9
    square_queries: int = 5000
    square_p_init: float = 0.8
    examples: int = 0
    subset: str = "first"
    seed: int = 0
    batch_size: int = identity.neutral(250)

    def __post_init__(self):
        checks.choice("audit.version", self.version, VERSIONS)
        if self.eps is not None:
            checks.number("audit.eps", self.eps, 0.0, 1.0)  # pixel units
        for key in ("apgd_steps", "fab_steps", "target_classes", "square_queries",
                    "batch_size"):
            checks.positive_int(f"audit.{key}", getattr(self, key))
        checks.number("audit.square_p_init", self.square_p_init, 0.0, 1.0, low_open=True)
        checks.non_negative_int("audit.examples", self.examples)
        checks.choice("audit.subset", self.subset, SUBSETS)
        checks.seed("audit.seed", self.seed)


@dataclasses.dataclass
class AuditResult:
    """RA in percent on `examples` examples: after each attack of the AutoAttack sequence
    (`ra`, cumulative; `ra["pgd"]` the run's PGD alone), AutoAttack's and the worst case."""
    version: str
    split: str
    examples: int
    eps: float
    sa: float
    ra: Dict[str, float]
    autoattack_ra: float
    worst_case_ra: float
    black_box_only: float         # % robust to every white-box attack, broken by Square
    gradient_masking_suspected: bool
    reasons: List[str]
    attacks: Dict[str, dict]      # how each attack was run
    # Per example (`records.py`): "clean", "pgd", each attack's name (cumulative, as `ra`),
    # "autoattack" and "worst_case" -- written next to audit.json, not into it.
    records: Optional[records_lib.ExampleRecords] = None

    def to_json(self):
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "records"}


def saved_model_logits(loaded):
    """A callable model(x, training=False) -> logits over a loaded exported SavedModel
    (`export.open_export`)."""
    serve = loaded.signatures["serving_default"]

    def model(images, training=False):
        del training  # a SavedModel serves in inference mode
        return serve(images=tf.convert_to_tensor(images, tf.float32))["logits"]
    return model


# ------------------------------------------------------------------ the attacks

@dataclasses.dataclass
class Step:
    """One attack of the sequence: `run(images, labels, logits) -> (adversarial images,
    broken mask)` on the examples still robust; `settings` describe it."""
    name: str
    run: Callable
    settings: dict
    white_box: bool = True


def sequence(model, num_classes, spec: AuditSpec, eps, seed) -> List[Step]:
    """The attacks of `spec.version`, in order (module docstring)."""
    targets = min(spec.target_classes, num_classes - 1)
    target_loss, target_loss_name = autoattack.targeted_loss(num_classes)
    ours = {"library": "dwlt_tf.autoattack (TensorFlow)", "eps": eps, "restarts": 1}

    def over_targets(x, y, logits, attack):
        """`attack(x, y, target)` for each likely wrong class in turn, each on the
        examples no earlier target broke (AutoAttack's targeted loop)."""
        broken, out = np.zeros(len(y), bool), x.copy()
        for target in autoattack.target_classes(logits, y, targets).T:
            todo = ~broken
            if not todo.any():
                break
            out[todo], broken[todo] = attack(x[todo], y[todo], target[todo])
        return out, broken

    def apgd(loss, targeted):
        def run(x, y, logits):
            if not targeted:
                return autoattack.apgd(model, x, y, eps, spec.apgd_steps, loss, seed=seed)
            return over_targets(x, y, logits, lambda x_, y_, t: autoattack.apgd(
                model, x_, y_, eps, spec.apgd_steps, loss, t, seed=seed))
        return run

    def fab(x, y, logits):
        return over_targets(x, y, logits, lambda x_, y_, t: autoattack.fab_targeted(
            model, x_, y_, eps, spec.fab_steps, t))

    steps = {
        "apgd_ce": Step("apgd_ce", apgd(autoattack.cross_entropy, False), dict(
            ours, attack="APGD-CE", loss="ce", steps=spec.apgd_steps)),
        "apgd_dlr": Step("apgd_dlr", apgd(_untargeted_dlr, False), dict(
            ours, attack="APGD-DLR", loss="dlr", steps=spec.apgd_steps)),
        "apgd_t": Step("apgd_t", apgd(target_loss, True), dict(
            ours, attack="APGD-T", loss=target_loss_name, steps=spec.apgd_steps,
            target_classes=targets)),
        "fab_t": Step("fab_t", fab, dict(ours, attack="FAB-T", steps=spec.fab_steps,
                                         target_classes=targets)),
        "square": Step("square", _square(spec, model, eps, seed), dict(
            ours, attack="Square", loss="margin", queries=spec.square_queries,
            p_init=spec.square_p_init), white_box=False),
    }
    return [steps[name] for name in SEQUENCE[spec.version]]


def _untargeted_dlr(logits, labels, target=None):
    """-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3): APGD-DLR's loss (3 classes or more)."""
    del target
    ordered = tf.sort(logits, axis=-1, direction="DESCENDING")
    z_y = tf.gather(logits, labels, batch_dims=1)
    others = logits - 1e9 * tf.one_hot(labels, tf.shape(logits)[-1])
    return -(z_y - tf.reduce_max(others, -1)) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def _square(spec, model, eps, seed):
    def run(x, y, logits):
        del logits
        return autoattack.square(model, x, y, eps, spec.square_queries, spec.square_p_init,
                                 seed)
    return run


def _check_inside(adversarial, images, eps, name):
    """ART and our attacks both promise it; an audit must not trust what it audits."""
    tolerance = 1e-5
    if adversarial.shape != images.shape:
        raise AssertionError(f"{name}: adversarial batch has shape {adversarial.shape}")
    if len(images) and (np.abs(adversarial - images).max() > eps + tolerance
                        or adversarial.min() < -tolerance or adversarial.max() > 1 + tolerance):
        raise AssertionError(f"{name} left the eps-ball or [0, 1]: max |delta| "
                             f"{np.abs(adversarial - images).max()}, range "
                             f"[{adversarial.min()}, {adversarial.max()}]")


# ----------------------------------------------------------------- bookkeeping

def attack_batch(model, images, labels, steps: List[Step], pgd: attacks.Attack, eps,
                 noise=None):
    """Per example of one batch: {"clean", "pgd", <step name>..., "autoattack"} boolean
    arrays, True where still correctly classified after that attack (cumulative along
    the sequence; "pgd" on its own)."""
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int64)
    logits_of = autoattack.forward(model)
    logits = np.concatenate([logits_of(images[i:i + 256]).numpy()
                             for i in range(0, len(images), 256)])
    clean = np.argmax(logits, 1) == labels
    own = attacks.Attack(eps, pgd.step_size * eps / pgd.eps if pgd.eps else pgd.step_size,
                         pgd.steps, pgd.random_start)
    adversarial = attacks.attack_batch(_KerasCall(model), own, images, labels, noise=noise,
                                       training=False).numpy()
    _check_inside(adversarial, images, eps, "pgd")
    out = {"clean": clean, "pgd": clean & (autoattack.predict(model, adversarial) == labels)}
    robust = clean.copy()
    for step in steps:
        preemption.check(f"during the audit ({step.name})")
        todo = np.flatnonzero(robust)
        if len(todo):
            adv, broken = step.run(images[todo], labels[todo], logits[todo])
            _check_inside(adv, images[todo], eps, step.name)
            robust[todo[broken]] = False
        out[step.name] = robust.copy()
    out["autoattack"] = robust.copy()
    return out


class _KerasCall:
    """What attacks.attack_batch needs of a model: __call__(x, training=...)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x, training=False):
        return self.model(x, training=training)


def summarize(counts, names, spec, eps, split, pgd, settings, order=None):
    """AuditResult from per-example robustness arrays (`attack_batch`, concatenated);
    `order`: the examples' `data.Splits.example_order` (None: no records kept)."""
    total = len(counts["clean"])

    def pct(mask):
        return 100.0 * float(np.sum(mask)) / max(total, 1)
    ra = {"pgd": pct(counts["pgd"])}
    ra.update({name: pct(counts[name]) for name in names})
    worst = counts["autoattack"] & counts["pgd"]
    white = names[-2] if len(names) > 1 else None
    black_box_only = pct(counts[white] & ~counts["square"]) if white and \
        "square" in names else 0.0
    reasons = []
    if black_box_only >= BLACK_BOX_ONLY_THRESHOLD:
        reasons.append(f"the black-box Square attack broke {black_box_only:.2f}% of the "
                       "examples that every white-box attack left correctly classified")
    if ra["pgd"] - pct(worst) > WORST_CASE_GAP_THRESHOLD:
        reasons.append(f"the worst-case RA ({pct(worst):.2f}%) is {ra['pgd'] - pct(worst):.2f} "
                       f"points below PGD-{pgd.steps}'s ({ra['pgd']:.2f}%)")
    kept = None
    if order is not None:
        kept = records_lib.ExampleRecords(split, order, total,
                                          dict(counts, worst_case=worst))
    return AuditResult(version=spec.version, split=split, examples=total, eps=eps,
                       sa=pct(counts["clean"]), ra=ra, autoattack_ra=pct(counts["autoattack"]),
                       worst_case_ra=pct(worst), black_box_only=black_box_only,
                       gradient_masking_suspected=bool(reasons), reasons=reasons,
                       attacks=settings, records=kept)


def run(model: Callable, images, labels, num_classes: int, spec: AuditSpec,
        pgd: attacks.Attack, noise=None, split="test", steps=None) -> AuditResult:
    """Audits `model` (callable (x, training=False) -> logits) on numpy `images` in [0, 1]
    with integer `labels`, `spec.batch_size` at a time. `steps` replaces the version's
    attack sequence (tests)."""
    eps = float(pgd.eps if spec.eps is None else spec.eps)
    steps = steps or sequence(model, num_classes, spec, eps, spec.seed)
    parts = []
    for i in range(0, len(images), spec.batch_size):
        chunk = slice(i, i + spec.batch_size)
        parts.append(attack_batch(model, images[chunk], labels[chunk], steps, pgd, eps,
                                  None if noise is None else noise[chunk]))
    return _result(parts, steps, spec, eps, split, pgd)


def _result(parts, steps, spec, eps, split, pgd, order=None):
    counts = {key: np.concatenate([p[key] for p in parts]) if parts else np.zeros(0, bool)
              for key in ["clean", "pgd", "autoattack"] + [s.name for s in steps]}
    settings = {"pgd": {"library": "cleverhans", "eps": eps, "steps": pgd.steps,
                        "step_size": pgd.step_size * eps / pgd.eps if pgd.eps else
                        pgd.step_size, "restarts": 1, "random_start": pgd.random_start}}
    settings.update({s.name: s.settings for s in steps})
    return summarize(counts, [s.name for s in steps], spec, eps, split, pgd, settings, order)


def audit_run(run_, splits, split, spec: AuditSpec, model=None):
    """The audit of a finished transfer run (`runs.open_run`): its best-RA checkpoint, or
    `model` (e.g. its exported SavedModel, `saved_model_logits`), attacked on `split` with
    the run's own evaluation PGD as the reference attack."""
    attack = run_.result.eval_attack
    if not attack:
        raise errors.ConfigError(f"run {run_.path!r} measured no RA (no evaluation attack)")
    pgd = attacks.Attack(attack["eps"], attack["step_size"], attack["steps"],
                         attack["random_start"])
    if model is None:
        model, _, _ = runs.load_best(run_, "ra", splits)
    return audit_split(model, splits, split, spec, pgd,
                       noise_seed=run_.identity["train"].get("seed", 1))


def audited_indices(spec: AuditSpec, size):
    """The split indices an audit attacks, ascending (`spec.examples`, `spec.subset`)."""
    wanted = min(spec.examples or size, size)
    if spec.subset == "first" or wanted == size:
        return np.arange(wanted)
    return data.evenly_spaced(wanted, size)


def audit_split(model, splits, split, spec: AuditSpec, pgd: attacks.Attack, noise_seed=1):
    """`run` on the examples `audited_indices` chooses of `split`, streamed batch by batch
    (memory independent of the split's size). PGD starts where the run's own evaluation
    started it (`noise_seed` = the run's `train.seed`), so with every example its RA is the
    run's reported one."""
    if isinstance(model, tf_keras.Model) and folding.conv_batchnorm_pairs(model):
        model = folding.FoldedModel(model)  # inference only: the same verdicts, faster
    eps = float(pgd.eps if spec.eps is None else spec.eps)
    steps = sequence(model, splits.num_classes, spec, eps, spec.seed)
    indices = audited_indices(spec, splits.size(split))
    chosen = np.zeros(splits.size(split), bool)
    chosen[indices] = True
    parts, pending = [], None   # pending: chosen examples read but not attacked yet
    for batch in pipeline.eval_batches(splits, split, spec.batch_size, seed=noise_seed,
                                       with_noise=True):
        index = batch["index"].numpy()
        keep = chosen[index]
        fresh = {k: batch[k].numpy()[keep] for k in ("image", "label", "noise")}
        pending = fresh if pending is None else {
            k: np.concatenate([pending[k], fresh[k]]) for k in fresh}
        last = index.max() >= indices[-1]
        # Attacked `batch_size` at a time: memory stays that of one batch.
        while len(pending["label"]) >= spec.batch_size or (last and len(pending["label"])):
            parts.append(attack_batch(model, pending["image"][:spec.batch_size],
                                      pending["label"][:spec.batch_size], steps, pgd, eps,
                                      pending["noise"][:spec.batch_size]))
            pending = {k: v[spec.batch_size:] for k, v in pending.items()}
        if last:
            break
    return _result(parts, steps, spec, eps, split, pgd,
                   splits.example_order(split, indices=indices))
