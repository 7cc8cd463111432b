"""Batches for training and evaluation: ordered, sharded per replica, then read and decoded.

* Epoch e's order is a stateless pseudo-random permutation of a split's indices
  (`tf.random.experimental.index_shuffle` seeded by (seed, e)): an exact global shuffle
  in O(1) memory that depends on nothing else -- not on TensorFlow's global seed, not on
  what ran before in the process.
* Global batch g is positions [g*B, (g+1)*B) of that order; replica r of R takes the
  r-th contiguous share (a short last batch is shared as evenly as possible). Each input
  pipeline -- one per worker under MultiWorkerMirroredStrategy, through
  `strategy.distribute_datasets_from_function` -- reads and decodes only its own
  replicas' shares: workers read disjoint parts whose union is the epoch, and the
  batches are the same whatever the number of replicas or workers.
* Examples are read (`data.Split.read`) and decoded (`preprocess.py`) after that, in
  parallel; a JPEG's training crop decodes only the crop window. Resuming mid-epoch
  (`skip_batches`) starts at a position: nothing skipped is read.
* Every random augmentation, and the optional per-example `noise` in [-1, 1] (PGD's
  random start), is keyed by (seed, epoch, example index).
"""
import hashlib
from typing import Optional

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf

from dwlt_tf import checks, data, errors, preprocess


def _seed_pair(*parts):
    """Stateless-RNG seed from Python values (stable across processes)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return (int.from_bytes(digest[:4], "little") & 0x7FFFFFFF,
            int.from_bytes(digest[4:8], "little") & 0x7FFFFFFF)


def _example_seed(base, index, salt):
    return tf.stack([tf.constant(base[0], tf.int64) + salt,
                     tf.constant(base[1], tf.int64) * 1_000_003 + index])


def _output(image, ex, with_noise, noise_seed):
    out = {"image": image, "label": ex["label"], "index": ex["index"]}
    if with_noise:
        out["noise"] = tf.random.stateless_uniform(
            tf.shape(image), _example_seed(noise_seed, ex["index"], 7), -1.0, 1.0)
    return out


def _replica_layout(input_context, batch_size):
    """(input pipelines, this pipeline's id, replicas) with the checks they need."""
    if input_context is None:
        return 1, 0, 1
    pipelines, replicas = input_context.num_input_pipelines, input_context.num_replicas_in_sync
    if replicas % pipelines or batch_size % replicas:
        raise errors.ConfigError(f"batch_size={batch_size} is not divisible by the {replicas} "
                                 f"replicas ({pipelines} input pipelines)")
    return pipelines, input_context.input_pipeline_id, replicas


def _per_replica_batches(num_examples, batch_size, first_step, input_context, make):
    """This input pipeline's per-replica batches of global steps first_step, ...

    `make(ds)` turns a dataset of epoch positions into prepared examples. Global step g
    covers epoch positions [g*B, (g+1)*B); replica r takes the r-th contiguous share,
    and this pipeline yields its local replicas' shares in replica order, step by step
    (how `distribute_datasets_from_function` hands them out).
    """
    pipelines, pipeline, replicas = _replica_layout(input_context, batch_size)
    local, per_replica = replicas // pipelines, batch_size // replicas
    full_steps = num_examples // batch_size
    parts = []
    if first_step < full_steps:
        share = local * per_replica
        offset = pipeline * share
        positions = tf.data.Dataset.range(first_step, full_steps).flat_map(
            lambda g: tf.data.Dataset.range(g * batch_size + offset,
                                             g * batch_size + offset + share))
        parts.append(make(positions).batch(per_replica))
    remainder = num_examples - full_steps * batch_size
    if remainder and first_step <= full_steps:
        base = full_steps * batch_size
        for replica in range(pipeline * local, (pipeline + 1) * local):
            start = base + remainder * replica // replicas
            end = base + remainder * (replica + 1) // replicas
            if end > start:
                parts.append(make(tf.data.Dataset.range(start, end)).batch(end - start))
            else:  # fewer examples than replicas: an empty batch of the same structure
                parts.append(make(tf.data.Dataset.range(0, 1)).batch(1).map(
                    lambda batch: tf.nest.map_structure(lambda t: t[:0], batch)))
    if not parts:
        parts.append(make(tf.data.Dataset.range(0)).batch(1))
    dataset = parts[0]
    for part in parts[1:]:
        dataset = dataset.concatenate(part)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_fusion = True  # read + decode in one stage
    # Sharded here, before reading: tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF)
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def train_batches(splits: data.Splits, batch_size: int, seed: int, epoch: int,
                  skip_batches: int = 0, with_noise: bool = False,
                  input_context: Optional[tf.distribute.InputContext] = None
                  ) -> tf.data.Dataset:
    """One epoch of augmented, shuffled training batches (the last one may be short).

    Deterministic in (seed, epoch) whatever the replica count; `skip_batches` resumes
    an epoch at global step `skip_batches` without reading what it skips. `with_noise`
    adds a per-example "noise" tensor in [-1, 1] for PGD's random start. With an
    `input_context` (`strategy.distribute_datasets_from_function`), the dataset holds
    this input pipeline's per-replica batches; without one, whole global batches.
    """
    _check_batch(batch_size)
    spec, split, n = splits.spec, splits.train, splits.num_train
    order_seed = tf.constant(_seed_pair("order", seed, epoch), tf.int64)
    aug_seed = _seed_pair("augment", seed, epoch)
    noise_seed = _seed_pair("noise", seed, epoch)

    def prepare(ex):
        example_seed = _example_seed(aug_seed, ex["index"], 0)
        if spec.augment == "imagenet":
            image = preprocess.train_imagenet(ex["encoded"], ex["name"], spec.image_size,
                                              example_seed)
        else:
            image = preprocess.train_cifar(ex["encoded"], ex["name"], spec.image_size,
                                           example_seed)
        return _output(image, ex, with_noise, noise_seed)

    def make(positions):
        indices = positions.map(lambda k: tf.random.experimental.index_shuffle(
            k, order_seed, tf.constant(max(n - 1, 0), tf.int64)))
        return split.read(indices).map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
                                       deterministic=True)
    return _per_replica_batches(n, batch_size, skip_batches, input_context, make)


def eval_batches(splits: data.Splits, split: str, batch_size: int, seed: int = 0,
                 with_noise: bool = False,
                 input_context: Optional[tf.distribute.InputContext] = None
                 ) -> tf.data.Dataset:
    """Preprocessed evaluation batches of `split` in its fixed order (sharded like
    `train_batches` when given an `input_context`)."""
    _check_batch(batch_size)
    spec, examples = splits.spec, splits.get(split)
    noise_seed = _seed_pair("eval-noise", seed, split)
    decode = preprocess.eval_imagenet if spec.augment == "imagenet" else preprocess.eval_cifar

    def prepare(ex):
        return _output(decode(ex["encoded"], ex["name"], spec.image_size), ex, with_noise,
                       noise_seed)

    def make(positions):
        return examples.read(positions).map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
                                            deterministic=True)
    return _per_replica_batches(len(examples), batch_size, 0, input_context, make)


def num_batches(num_examples, batch_size):
    return -(-num_examples // batch_size)


def _check_batch(batch_size):
    checks.positive_int("batch_size", batch_size)
