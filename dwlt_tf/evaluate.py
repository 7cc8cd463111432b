"""Standard accuracy (SA) and robust accuracy (RA, PGD-20 by default) on any split.

Evaluation runs the model in inference mode (BatchNorm running statistics), attacks
included, as the reference's `validate`/`validate_adv` do under `model.eval()`. There
BatchNorm is an affine map, so evaluation runs on a copy with BatchNorm folded into the
convolutions (`folding.FoldedModel`, refreshed from the model's weights at every call):
the same verdicts, a cheaper forward pass and attack gradient.
It works under any tf.distribute strategy: batches are split across replicas and the
correct counts are summed.
"""
import dataclasses
from typing import Optional

import numpy as np

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf

from dwlt_tf import attacks, data, folding, pipeline, preemption, pruning_wrapper, runtime
from dwlt_tf import records as records_lib


@dataclasses.dataclass
class Accuracy:
    sa: float           # standard accuracy, percent
    ra: Optional[float]  # robust accuracy, percent (None when not attacked)
    loss: float         # mean clean cross-entropy
    count: int
    # With `per_example=True`: records "clean" and "robust" (when attacked) per example.
    records: Optional[records_lib.ExampleRecords] = None

    def as_dict(self, prefix=""):
        out = {f"{prefix}sa": self.sa, f"{prefix}loss": self.loss}
        if self.ra is not None:
            out[f"{prefix}ra"] = self.ra
        return out


class Evaluator:
    """Compiled SA/RA evaluation of one model under one strategy (reused every epoch)."""

    def __init__(self, model, attack: Optional[attacks.Attack] = None, strategy=None,
                 fold_batchnorm=True, scale_loss=False):
        self.model = model
        self.attack = attack
        self.scale_loss = scale_loss  # True for float16 models (attacks.scaled_cross_entropy)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.fold_batchnorm = fold_batchnorm
        self._folded = None
        self._replica_fn = (tf.function(self._replica_step, jit_compile=True)
                            if runtime.jit_compile() else self._replica_step)
        self._step = tf.function(self._distributed_step, reduce_retracing=True)

    def _replica_step(self, batch, stop):
        images, labels = batch["image"], batch["label"]
        model = self._folded or self.model
        logits = model(images, training=False)
        loss = tf.reduce_sum(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        correct = tf.cast(tf.equal(tf.argmax(logits, 1), labels), tf.int32)
        robust = tf.zeros_like(correct)
        if self.attack is not None:
            adv = attacks.attack_batch(model, self.attack, images, labels,
                                       noise=batch.get("noise"), training=False,
                                       scale_loss=self.scale_loss,
                                       snapshot=pruning_wrapper.kernel_snapshot)
            adv_logits = model(adv, training=False)
            robust = tf.cast(tf.equal(tf.argmax(adv_logits, 1), labels), tf.int32)
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        totals = tf.stack([tf.cast(tf.reduce_sum(correct), tf.float32),
                           tf.cast(tf.reduce_sum(robust), tf.float32), loss, count,
                           tf.cast(stop, tf.float32)])
        # Per example (int32: collectives gather no bools): for the paired verdicts.
        return totals, batch["index"], correct, robust

    def _refresh_folded(self):
        if not self.fold_batchnorm:
            return
        if self._folded is None:
            if not folding.conv_batchnorm_pairs(self.model):
                self.fold_batchnorm = False  # nothing to fold: evaluate the model itself
                return
            with self.strategy.scope():
                self._folded = folding.FoldedModel(self.model)
        else:
            self._folded.refresh()

    def _distributed_step(self, batch, stop, per_example):
        totals, index, correct, robust = self.strategy.run(self._replica_fn,
                                                           args=(batch, stop))
        totals = self.strategy.reduce(tf.distribute.ReduceOp.SUM, totals, axis=None)
        if not per_example:
            return totals
        # Every worker gets every example's outcome (the chief writes the records).
        return (totals,) + tuple(self.strategy.gather(v, axis=0)
                                 for v in (index, correct, robust))

    def __call__(self, splits: data.Splits, split: str, batch_size: int, seed: int = 0,
                 per_example: bool = False) -> Accuracy:
        """SA (and RA) on `split`; each input pipeline reads only its replicas' share.
        `per_example`: also which examples were correct (`Accuracy.records`)."""
        self._refresh_folded()
        with_noise = self.attack is not None  # PGD's random start, drawn per example
        batches = self.strategy.distribute_datasets_from_function(
            lambda context: pipeline.eval_batches(splits, split, batch_size, seed, with_noise,
                                              input_context=context))
        totals, gathered = tf.zeros([5]), []
        # A stop request abandons the evaluation between batches (preemption.py); with
        # several workers the request travels in the batch's reduction, so all stop
        # after the same batch.
        multi_worker = runtime.multi_worker(self.strategy)
        with data.unreadable_images_named():
            for batch in batches:
                asked = preemption.requested()
                if asked is not None and not multi_worker:
                    raise preemption.Preempted(asked, f"while evaluating on {split}")
                out = self._step(batch, tf.constant(0.0 if asked is None else 1.0),
                                 per_example)
                if per_example:
                    out, *parts = out
                    gathered.append([p.numpy() for p in parts])
                totals += out
                if multi_worker and totals[4] > 0:
                    raise preemption.Preempted(asked, f"while evaluating on {split}")
        correct, robust, loss, count, _ = (float(v) for v in totals.numpy())
        if count == 0:
            raise ValueError("Cannot evaluate on an empty dataset")
        records = None
        if per_example:
            index, clean, attacked = (np.concatenate(column) for column in zip(*gathered))
            outcomes = {"clean": clean}
            if self.attack is not None:
                outcomes["robust"] = attacked
            records = records_lib.from_indexed(split, splits.example_order(split),
                                               splits.size(split), index, outcomes)
        return Accuracy(sa=100.0 * correct / count,
                        ra=100.0 * robust / count if self.attack is not None else None,
                        loss=loss / count, count=int(count), records=records)


def evaluate(model, splits: data.Splits, split="test", batch_size=128,
             attack: Optional[attacks.Attack] = attacks.PRESETS["pgd20_eval"], seed=0,
             strategy=None, fold_batchnorm=True, scale_loss=False) -> Accuracy:
    """SA (and RA under `attack`, None to skip) of `model` on `split` of `splits`
    (`scale_loss`: True for a model computing in float16)."""
    return Evaluator(model, attack, strategy, fold_batchnorm, scale_loss)(splits, split,
                                                                           batch_size, seed)
