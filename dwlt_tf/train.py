"""The training engine: standard, fast-adversarial and PGD training under tf.distribute.

One custom loop (`strategy.run` inside a `tf.function` over a distributed dataset)
serves every training of the study -- IMP rounds on the pre-training task and transfer
of tickets -- under the default strategy (CPU), `MirroredStrategy` (local GPUs) and
`MultiWorkerMirroredStrategy` (hosts, from TF_CONFIG):

* modes: `standard`; `fast_adversarial` (FGSM with random start, Wong et al. 2020);
  `pgd` (PGD-k adversarial training, Madry et al.), adversaries crafted in training
  mode as the reference does (see `attacks.py`);
* torch-exact SGD (momentum, coupled weight decay) and epoch-wise schedules
  (`optim.py`); the loss is summed per replica and divided by the *global* number of
  examples in the step, so the summed gradients equal the single-device mean -- also
  on a short last batch (the reference keeps it: drop_last=False);
* pruned weights stay exactly zero: the wrappers mask in the forward pass and the
  kernels are re-masked after every optimizer update (`pruning_wrapper.apply_masks`);
* every epoch: SA and RA on the validation split; best-SA and best-RA weights kept and
  finally both evaluated on test, as the reference reports them, with which test
  examples each got right clean and attacked (`records.py`, `test_records.json`: the
  paired verdicts compare models example by example);
* never loses work: a CheckpointManager checkpoint (model, optimizer, masks, epoch and
  step, best metrics) every epoch and optionally every N steps; the same call resumes
  after a crash, mid-epoch included, and -- the input pipeline being keyed by (seed,
  epoch, example) -- continues exactly as an uninterrupted run. Result and metric files
  are written atomically. A NaN/Inf loss stops the run with `NonFiniteLossError`
  before anything is saved, so the last good checkpoint stays intact;
* progress bar per epoch, TensorBoard scalars, `metrics.jsonl`, optional mixed
  precision (`mixed_bfloat16`, `mixed_float16` with loss scaling).
"""
import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from typing import Callable, Optional, Tuple

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tf_keras

from dwlt_tf import (attacks, checks, data, errors, evaluate, files, identity, optim,
                     pipeline, preemption, pruning_wrapper, records, runtime)

MODES = ("standard", "fast_adversarial", "pgd")
# float64 is for numerical checks (e.g. comparing strategies without float32 noise).
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "float64")
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"
_DEFAULT_ATTACK = {"standard": None, "fast_adversarial": attacks.PRESETS["fgsm_rs"],
                   "pgd": attacks.PRESETS["pgd10_train"]}


class NonFiniteLossError(errors.UserError, FloatingPointError):
    """The training loss became NaN or Inf; the last good checkpoint was kept."""


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """Hyperparameters of one training run (the `train` section of every config)."""
    mode: str = "standard"
    epochs: int = 1
    batch_size: int = 128            # global, split across replicas
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "multistep"
    milestones: Tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: int = 0
    attack: Optional[attacks.Attack] = None        # training attack; None = mode default
    eval_attack: Optional[attacks.Attack] = attacks.PRESETS["pgd20_eval"]  # None: no RA
    # Select a best-RA checkpoint on validation (RA every epoch). False: validation
    # measures SA only and the best-SA checkpoint also serves as best-RA (the
    # reference's standard transfer); test RA is still measured with `eval_attack`.
    select_ra: bool = True
    eval_start_epoch: int = 0        # the reference's adversarial transfer: 45
    seed: int = 1
    precision: str = "float32"
    test: bool = True                # evaluate the best-SA/-RA weights on test at the end
    # Result-neutral settings, left out of run identities (`identity.neutral`).
    eval_batch_size: int = identity.neutral(256)
    checkpoint_every_steps: int = identity.neutral(0)  # 0: at the end of every epoch only
    log_every_steps: int = identity.neutral(10)
    verbose: int = identity.neutral(1)

    def __post_init__(self):
        checks.choice("train.mode", self.mode, MODES)
        for key in ("epochs", "batch_size", "eval_batch_size"):
            checks.positive_int(f"train.{key}", getattr(self, key))
        for key in ("warmup_epochs", "eval_start_epoch", "checkpoint_every_steps",
                    "log_every_steps"):
            checks.non_negative_int(f"train.{key}", getattr(self, key))
        checks.number("train.lr", self.lr, 0.0, low_open=True)
        checks.number("train.momentum", self.momentum, 0.0)
        checks.number("train.weight_decay", self.weight_decay, 0.0)
        checks.choice("train.schedule", self.schedule, optim.SCHEDULES)
        milestones = checks.int_tuple("train.milestones", self.milestones, low=1,
                                      distinct=True, increasing=True)
        checks.number("train.gamma", self.gamma, 0.0, low_open=True)
        for key in ("attack", "eval_attack"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, attacks.Attack):
                checks.fail(f"train.{key}", value, "must be an attack (eps, step_size, steps)")
        checks.boolean("train.select_ra", self.select_ra)
        checks.boolean("train.test", self.test)
        checks.seed("train.seed", self.seed)
        checks.choice("train.precision", self.precision, PRECISIONS)
        checks.integer("train.verbose", self.verbose, 0, 2)  # Keras's progress-bar modes
        if self.attack is None and self.mode != "standard":
            object.__setattr__(self, "attack", _DEFAULT_ATTACK[self.mode])
        object.__setattr__(self, "milestones", milestones)

    def as_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CheckpointResult:
    """One checkpoint selected on validation (best SA or best RA) and its test numbers."""
    checkpoint: str                   # "best_sa" or "best_ra" (a folder of the workdir)
    epoch: int                        # 0-based epoch whose end it was saved at
    val_sa: float
    val_ra: Optional[float]           # None when validation measured SA only
    test_sa: Optional[float] = None   # None when the run did not evaluate on test
    test_ra: Optional[float] = None   # None when there is no evaluation attack


@dataclasses.dataclass
class TrainResult:
    """What a finished run reports (also written to <workdir>/result.json).

    `best_sa`/`best_ra` are the best-SA and best-RA checkpoints; `eval_attack` is the
    attack behind every RA in them (None: no RA was measured).
    """
    workdir: str
    epochs: int
    best_sa: CheckpointResult
    best_ra: CheckpointResult
    eval_attack: Optional[dict]
    final: dict            # last epoch's metrics
    sparsity: float
    images_per_sec: float
    model: Optional[tf_keras.Model] = None

    def best(self, which) -> CheckpointResult:
        """The best-SA ("sa") or best-RA ("ra") checkpoint."""
        if which not in ("sa", "ra"):
            raise ValueError(f"which must be 'sa' or 'ra', got {which!r}")
        return self.best_sa if which == "sa" else self.best_ra

    def to_json(self):
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "model"}

    @classmethod
    def from_json(cls, record):
        fields = {f.name for f in dataclasses.fields(cls)} - {"model"}
        values = {k: v for k, v in record.items() if k in fields}
        for which in ("best_sa", "best_ra"):
            values[which] = CheckpointResult(**values[which])
        return cls(**values)


def attack_description(attack: Optional[attacks.Attack]) -> Optional[dict]:
    """How an RA was measured, for every file that reports one."""
    if attack is None:
        return None
    return {"method": "pgd", "norm": "linf", "library": "cleverhans",
            **dataclasses.asdict(attack), "restarts": 1}


def run_identity(spec: TrainSpec, dataset: dict, inputs: Optional[dict] = None,
                 strategy=None, full: bool = False) -> dict:
    """The identity of a training run: its spec, its data, its other inputs and the
    process settings that change its numbers (`runtime.settings`: replicas, XLA,
    determinism, oneDNN; left out at their defaults, as every default is).

    `dataset` is the data's identity (`Splits.identity`); `inputs` names what the model
    starts from (weights' and ticket's sha256, ...). Callers that check a workdir
    before training pass `fit` the same `inputs`. `full`: the resolved identity (every
    default spelled out, `identity.claim`'s `resolved`).
    """
    out = {"train": identity.describe(spec, full), "dataset": dataset, **(inputs or {})}
    settings = identity.describe(runtime.settings(strategy), full)
    if settings:
        out["runtime"] = settings
    return out


@contextlib.contextmanager
def precision_policy(name):
    """Sets the Keras mixed-precision policy while models are built and trained."""
    previous = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        tf_keras.mixed_precision.set_global_policy(previous)


class TrainingRun:
    """State of one `fit` call: model, optimizer, checkpoints, step functions.

    `fit` drives it; benchmarks build one to time `train_step` -- the exact step the
    trainers run (attack, forward, backward, torch-style SGD, re-masking).
    """

    def __init__(self, model_fn, splits, spec, workdir, strategy):
        self.splits, self.spec, self.workdir, self.strategy = splits, spec, workdir, strategy
        self.chief = runtime.is_chief(strategy)
        self.steps_per_epoch = pipeline.num_batches(splits.num_train, spec.batch_size)
        with strategy.scope():
            self.model = model_fn()
            self.schedule = optim.EpochSchedule(
                spec.lr, self.steps_per_epoch, spec.schedule, spec.milestones, spec.gamma,
                spec.epochs, spec.warmup_epochs)
            optimizer = optim.TorchSGD(self.schedule, spec.momentum, spec.weight_decay)
            if spec.precision == "mixed_float16":
                optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            self.optimizer.build(self.model.trainable_variables)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.best_sa = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
            self.best_ra = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
            # Running (loss sum, correct, examples) of the current epoch, so an epoch
            # resumed mid-way reports the same averages as an uninterrupted one.
            self.epoch_totals = tf.Variable([0.0, 0.0, 0.0], dtype=tf.float64,
                                            trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, epoch=self.epoch,
            step_in_epoch=self.step_in_epoch, best_sa=self.best_sa, best_ra=self.best_ra,
            epoch_totals=self.epoch_totals)
        ckpt_dir = os.path.join(workdir, "checkpoints")
        if not self.chief:  # other workers save too (collectives), but to a scratch dir
            ckpt_dir = os.path.join(workdir, f".worker-{strategy.cluster_resolver.task_id}")
        self.manager = tf.train.CheckpointManager(self.checkpoint, ckpt_dir, max_to_keep=2)
        half = spec.precision == "mixed_float16"  # float16 attacks scale their loss
        self.evaluator = evaluate.Evaluator(self.model, spec.eval_attack, strategy,
                                            scale_loss=half)
        self.val_evaluator = self.evaluator if spec.select_ra else evaluate.Evaluator(
            self.model, None, strategy, scale_loss=half)
        # XLA compiles each replica's step (the iterator and the cross-replica re-masking
        # stay outside: XLA cannot compile dataset ops).
        self._replica_fn = (tf.function(self._replica_step, jit_compile=True)
                            if runtime.jit_compile() else self._replica_step)
        self.train_step = tf.function(self._train_step)

    # ----------------------------------------------------------------- stepping
    def _replica_step(self, batch, stop):
        spec, model = self.spec, self.model
        images, labels = batch["image"], batch["label"]
        local = tf.cast(tf.shape(labels)[0], tf.float32)
        total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM,
                                                               local)
        # Finish this collective before any other (e.g. synchronized BatchNorm's), so all
        # replicas launch their collectives in the same order.
        with tf.control_dependencies([total]):
            images = tf.identity(images)
        if spec.attack is not None:
            images = attacks.attack_batch(model, spec.attack, images, labels,
                                          noise=batch["noise"], training=True,
                                          scale_loss=spec.precision == "mixed_float16",
                                          snapshot=pruning_wrapper.kernel_snapshot)
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss_sum = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=logits))
            loss = loss_sum / tf.maximum(total, 1.0)
            if spec.precision == "mixed_float16":
                loss = self.optimizer.get_scaled_loss(loss)
        variables = model.trainable_variables
        grads = tape.gradient(loss, variables)
        if spec.precision == "mixed_float16":
            grads = self.optimizer.get_unscaled_gradients(grads)
        self.optimizer.apply_gradients(zip(grads, variables))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1), labels), tf.float32))
        return tf.stack([loss_sum, correct, local, tf.cast(stop, tf.float32)])

    def _train_step(self, iterator, stop=None):
        """One global step. Returns [loss sum, correct, examples, stop requests]: `stop`
        (a float tensor, 1 where this process was asked to stop) is summed with the
        step's results over every replica and worker, so all agree on stopping."""
        stop = tf.constant(0.0) if stop is None else stop
        batch = next(iterator)
        per_replica = self.strategy.run(self._replica_fn, args=(batch, stop))
        pruning_wrapper.apply_masks(self.model)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    # -------------------------------------------------------------- bookkeeping
    def save_best(self, which):
        path = os.path.join(self.workdir, f"best_{which}")
        if not self.chief:
            tf.train.Checkpoint(model=self.model).write(
                os.path.join(self.manager.directory, f"best_{which}", "ckpt"))
            return
        with files.atomic_directory(path, overwrite=True) as tmp:
            tf.train.Checkpoint(model=self.model).write(os.path.join(tmp, "ckpt"))

    def load_weights(self, which):
        root = self.workdir if self.chief else self.manager.directory
        status = tf.train.Checkpoint(model=self.model).read(
            os.path.join(root, f"best_{which}", "ckpt"))
        status.assert_existing_objects_matched().expect_partial()

    def save(self, step, where):
        """A checkpoint -- only of finite weights, so the last one is always good."""
        finite = all(bool(tf.reduce_all(tf.math.is_finite(v)))
                     for v in self.model.trainable_variables)
        if not finite:
            last = self.manager.latest_checkpoint or "none yet"
            raise NonFiniteLossError(
                f"Weights became NaN/Inf ({where}) in {self.workdir}; stopped without "
                f"saving, the last good checkpoint ({last}) is intact")
        self.manager.save(checkpoint_number=step)

    def restore_latest(self):
        # Every worker resumes from the chief's checkpoints (a shared filesystem).
        latest = tf.train.latest_checkpoint(os.path.join(self.workdir, "checkpoints"))
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        return latest


def _read_metrics(path, before_epoch):
    """Metric records of epochs < before_epoch (drops a torn last line after a crash)."""
    kept = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("epoch", 1 << 30) < before_epoch:
                    kept.append(record)
    return kept


def _append_metrics(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def fit(model_fn: Callable[[], tf_keras.Model], splits: data.Splits, spec: TrainSpec,
        workdir: str, strategy: Optional[tf.distribute.Strategy] = None,
        inputs: Optional[dict] = None, overwrite: bool = False) -> TrainResult:
    """Trains the model `model_fn()` builds (inside the strategy's scope) on `splits`.

    `workdir` holds checkpoints, best-SA/-RA weights, TensorBoard logs,
    `metrics.jsonl` and, once finished, `result.json`. The workdir belongs to one run
    identity (`run_identity(spec, splits, inputs)`, recorded in `run.json`; `inputs`
    describes what `model_fn` starts from). Calling `fit` again with the same identity
    resumes an interrupted run, or returns a finished run's result with its final
    weights loaded, without training again; another identity raises
    `identity.RunIdentityError` before any work, unless `overwrite` moves the old run
    aside.
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if spec.batch_size % replicas:
        raise errors.ConfigError(f"train.batch_size={spec.batch_size} is not divisible by "
                                 f"the {replicas} replicas of {type(strategy).__name__}")
    if splits.num_train < 1:
        raise errors.ConfigError(f"The training split is empty ({splits.spec.label!r})")
    if runtime.is_chief(strategy):  # other workers train the same run; the chief records it
        identity.claim(workdir, run_identity(spec, splits.identity, inputs, strategy),
                       overwrite, "training run",
                       resolved=run_identity(spec, splits.identity, inputs, strategy, True))
    with precision_policy(spec.precision):
        run = TrainingRun(model_fn, splits, spec, workdir, strategy)
        result_path = os.path.join(workdir, RESULT_FILE)
        if os.path.exists(result_path):
            result = TrainResult.from_json(files.read_json(result_path))
            if spec.test and not records.exists(workdir):
                _backfill_records(run, result)  # finished before records existed
            run.restore_latest()
            result.model = run.model
            return result
        return _train(run, result_path)


def _train(run, result_path):
    spec = run.spec
    resumed_from = run.restore_latest()
    start_epoch, skip = int(run.epoch.numpy()), int(run.step_in_epoch.numpy())
    metrics_path = os.path.join(run.workdir, METRICS_FILE)
    history = _read_metrics(metrics_path, start_epoch)
    writer = None
    if run.chief:
        files.update_text(metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n"
                                                for r in history))
        writer = tf.summary.create_file_writer(os.path.join(run.workdir, "tensorboard"))
    if resumed_from and spec.verbose:
        print(f"Resuming {run.workdir} at epoch {start_epoch + 1}, step {skip}")
    throughput = []
    try:
        for epoch in range(start_epoch, spec.epochs):
            totals, seconds = _train_epoch(run, epoch, skip, writer, throughput,
                                            first_of_run=epoch == start_epoch)
            skip = 0
            record = _end_epoch(run, epoch, totals, seconds)
            if run.chief:
                _append_metrics(metrics_path, record)
                with writer.as_default(step=record["step"]):
                    for key in ("train_loss", "train_acc", "val_sa", "val_ra", "val_loss",
                                "sparsity", "lr"):
                        if key in record:
                            tf.summary.scalar(f"epoch/{key}", record[key])
            history.append(record)
            if spec.verbose:
                print(f"epoch {epoch + 1}/{spec.epochs}: " + ", ".join(
                    f"{k} {v:.4g}" for k, v in record.items() if k not in ("epoch", "step")))
            run.epoch.assign(epoch + 1)
            run.step_in_epoch.assign(0)
            run.epoch_totals.assign([0.0, 0.0, 0.0])
            run.save((epoch + 1) * run.steps_per_epoch, f"end of epoch {epoch + 1}")
    finally:
        if writer is not None:
            writer.close()  # flushes what a stop or crash would otherwise lose
    return _finish(run, history, throughput, result_path)


def _save_progress(run, epoch, steps_done, totals):
    """A checkpoint inside epoch `epoch` after `steps_done` of its steps."""
    run.step_in_epoch.assign(steps_done)
    run.epoch_totals.assign(list(totals))
    run.save(epoch * run.steps_per_epoch + steps_done,
             f"epoch {epoch + 1}, step {steps_done}")


def _train_epoch(run, epoch, skip, writer, throughput, first_of_run):
    """The training steps of `epoch` from step `skip` on. Returns ((loss sum, correct,
    examples), seconds). A stop request ends it after the current step, checkpointed."""
    spec, strategy = run.spec, run.strategy
    # Each input pipeline (one per worker) reads and decodes only its replicas' share.
    iterator = iter(strategy.distribute_datasets_from_function(
        lambda context: pipeline.train_batches(
            run.splits, spec.batch_size, spec.seed, epoch, skip_batches=skip,
            with_noise=spec.attack is not None, input_context=context)))
    bar = tf_keras.utils.Progbar(run.steps_per_epoch, verbose=spec.verbose,
                                 stateful_metrics=["loss", "acc", "img/s"])
    if skip:
        bar.update(skip)
    totals = [float(v) for v in run.epoch_totals.numpy()] if skip else [0.0, 0.0, 0.0]
    epoch_start = time.time()
    multi_worker = runtime.multi_worker(strategy)
    for step in range(skip, run.steps_per_epoch):
        started = time.time()
        asked = preemption.requested()
        with data.unreadable_images_named():
            batch_loss, batch_correct, batch_count, stops = (
                float(v) for v in run.train_step(
                    iterator, tf.constant(0.0 if asked is None else 1.0)).numpy())
        elapsed = time.time() - started
        if not math.isfinite(batch_loss):
            raise NonFiniteLossError(
                f"Training loss became {batch_loss} at epoch {epoch + 1}, step {step + 1} "
                f"in {run.workdir}; stopped without saving, the last good checkpoint "
                f"({run.manager.latest_checkpoint or 'none yet'}) is intact")
        totals = [totals[0] + batch_loss, totals[1] + batch_correct, totals[2] + batch_count]
        global_step = epoch * run.steps_per_epoch + step + 1
        if step > skip or not first_of_run:  # a run's first step includes tracing
            throughput.append(batch_count / max(elapsed, 1e-9))
        bar.update(step + 1, [("loss", batch_loss / max(batch_count, 1)),
                              ("acc", 100 * batch_correct / max(batch_count, 1)),
                              ("img/s", batch_count / max(elapsed, 1e-9))])
        if writer and spec.log_every_steps and global_step % spec.log_every_steps == 0:
            with writer.as_default(step=global_step):
                tf.summary.scalar("train/loss", batch_loss / max(batch_count, 1))
                tf.summary.scalar("train/lr", run.schedule(global_step - 1))
                tf.summary.scalar("train/images_per_sec", batch_count / max(elapsed, 1e-9))
        # Every worker must stop after the same step: one that was not signalled learns
        # of it from the step's reduction (`stops`), one step after the signal at most.
        if stops > 0 or (preemption.requested() is not None and not multi_worker):
            _save_progress(run, epoch, step + 1, totals)
            raise preemption.Preempted(preemption.requested(), f"at epoch {epoch + 1} step "
                                       f"{step + 1} of {run.steps_per_epoch}",
                                       checkpointed=True)
        if spec.checkpoint_every_steps and global_step % spec.checkpoint_every_steps == 0 \
                and step + 1 < run.steps_per_epoch:
            _save_progress(run, epoch, step + 1, totals)
    return totals, time.time() - epoch_start


def _end_epoch(run, epoch, totals, seconds):
    """The epoch's record; validation (and best-checkpoint saving) when it is due. A stop
    request during validation checkpoints the finished steps (validation reruns)."""
    spec, model = run.spec, run.model
    loss_sum, correct, seen = totals
    record = {"epoch": epoch, "step": (epoch + 1) * run.steps_per_epoch,
              "lr": run.schedule.at_epoch(epoch),
              "train_loss": loss_sum / max(seen, 1), "train_acc": 100 * correct / max(seen, 1),
              "epoch_seconds": seconds,
              "sparsity": pruning_wrapper.model_sparsity(model)
              if pruning_wrapper.wrappers(model) else 0.0}
    if epoch >= spec.eval_start_epoch or epoch == spec.epochs - 1:
        try:
            val = run.val_evaluator(run.splits, "val", spec.eval_batch_size, spec.seed)
        except preemption.Preempted as stop:
            _save_progress(run, epoch, run.steps_per_epoch, totals)
            raise preemption.Preempted(stop.signum, f"at epoch {epoch + 1}, validating after "
                                       "its last step", checkpointed=True) from None
        record.update(val.as_dict("val_"))
        if val.sa > run.best_sa.numpy():
            run.best_sa.assign(val.sa)
            run.save_best("sa")
        ra = val.ra if val.ra is not None else val.sa
        if ra > run.best_ra.numpy():
            run.best_ra.assign(ra)
            run.save_best("ra")
    return record


def _test_checkpoints(run, same_epoch):
    """{"sa": Accuracy, "ra": Accuracy} of the best-SA and best-RA weights on test, with
    per-example records; one evaluation when both are the same checkpoint (same epoch)."""
    tested = {}
    for which in ("sa", "ra"):
        if which == "ra" and same_epoch:
            tested["ra"] = tested["sa"]
            continue
        run.load_weights(which)
        tested[which] = run.evaluator(run.splits, "test", run.spec.eval_batch_size,
                                      run.spec.seed, per_example=True)
    return tested


def _test_records(tested):
    """One record set: `best_<which>/clean` and `best_<which>/robust` per example."""
    first = tested["sa"].records
    correct = {f"best_{which}/{name}": values for which, acc in tested.items()
               for name, values in acc.records.correct.items()}
    return records.ExampleRecords(first.split, first.order, first.count, correct)


def _backfill_records(run, result):
    """Records of a run finished by an older dwlt_tf: its best checkpoints evaluated again
    on test -- deterministic, so they must reproduce the reported numbers exactly."""
    tested = _test_checkpoints(run, result.best_sa.epoch == result.best_ra.epoch)
    for which, acc in tested.items():
        reported = result.best(which)
        if (acc.sa, acc.ra) != (reported.test_sa, reported.test_ra):
            raise RuntimeError(
                f"{run.workdir}: re-evaluating its best-{which.upper()} checkpoint on test gave "
                f"SA {acc.sa}, RA {acc.ra}, but result.json reports SA {reported.test_sa}, RA "
                f"{reported.test_ra}: the evaluation does not reproduce (another eval batch "
                "size or oneDNN setting?); its per-example records would not explain its "
                "results, so none were written")
    if run.chief:
        records.write(run.workdir, _test_records(tested))


def _finish(run, history, throughput, result_path):
    spec = run.spec
    evaluated = [r for r in history if "val_sa" in r]
    best = {}
    ra_key = "val_ra" if spec.eval_attack and spec.select_ra else "val_sa"
    for which, key in (("sa", "val_sa"), ("ra", ra_key)):
        # First epoch reaching the best value, as the reference's strict `>` does.
        top = max(evaluated, key=lambda r, k=key: (r[k], -r["epoch"]))
        best[which] = CheckpointResult(f"best_{which}", top["epoch"], top["val_sa"],
                                       top.get("val_ra"))
    if spec.test:
        tested = _test_checkpoints(run, best["sa"].epoch == best["ra"].epoch)
        for which, acc in tested.items():
            best[which] = dataclasses.replace(best[which], test_sa=acc.sa, test_ra=acc.ra)
        if run.chief:  # before result.json: a finished run always has its records
            records.write(run.workdir, _test_records(tested))
        run.restore_latest()  # leave the final weights in the model
    result = TrainResult(
        workdir=run.workdir, epochs=spec.epochs, best_sa=best["sa"], best_ra=best["ra"],
        eval_attack=attack_description(spec.eval_attack),
        final={k: v for k, v in history[-1].items()},
        sparsity=pruning_wrapper.model_sparsity(run.model)
        if pruning_wrapper.wrappers(run.model) else 0.0,
        images_per_sec=float(sorted(throughput)[len(throughput) // 2]) if throughput else 0.0)
    if run.chief:
        files.write_json(result_path, {**result.to_json(), "spec": spec.as_dict()})
    else:
        shutil.rmtree(run.manager.directory, ignore_errors=True)
    result.model = run.model
    return result
