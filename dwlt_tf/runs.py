"""Finished transfer runs, read back: for evaluation, export and the robustness audit.

A transfer run's workdir holds `run.json` (its identity), `transfer.json` (what was
transferred: weights, ticket, dataset), `result.json` and the best-SA / best-RA
checkpoints. `open_run` reopens it; `load_best` rebuilds its model with the best weights
after checking that the weights, ticket and data on disk are still the ones it was trained
with. `model_fn` builds a transfer model -- the products meet here, below them: transfer
trains with it, export and audit read what it trained.
"""
import dataclasses
import os

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tf_keras

from dwlt_tf import (convert, data, errors, files, identity, models, pruning_wrapper, tickets,
                     train)

PROVENANCE_FILE = "transfer.json"


class RunNotFoundError(errors.UserError, FileNotFoundError):
    """A path that is not a finished transfer run (or a damaged one)."""


def inputs(weights_meta, masks) -> dict:
    """What a transfer starts from, by content: its part of the run identity."""
    return {"kind": "transfer", "pretrained": convert.weights_identity(weights_meta),
            "ticket": tickets.fingerprint(masks) if masks is not None else None}


def model_fn(source: convert.Converted, masks, splits: data.Splits, seed, prunable=("conv",)):
    """Returns the function building the transfer model (inside a strategy scope) from the
    converted pre-trained weights `source` (`convert.load_converted`)."""
    weights = {layer.name: layer.get_weights() for layer in source.model.layers
               if layer.weights and layer.name not in ("fc", "normalize")}
    meta = source.meta
    mean, std = splits.spec.mean_std

    def build():
        tf_keras.utils.set_random_seed(seed)  # the new head's init
        # The reference transfers on one GPU: BatchNorm normalizes over the whole batch.
        # With several replicas, synchronized BatchNorm does the same, so a transfer means
        # the same on 1 or 8 GPUs (IMP keeps per-replica statistics, as the reference's DDP).
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        model = models.build_resnet(meta["arch"], splits.num_classes, meta["stem"], mean, std,
                                    meta["base_width"], sync_batchnorm=replicas > 1)
        for layer in model.layers:
            if layer.name in weights:
                layer.set_weights(weights[layer.name])
        if masks is None:
            return model
        wrapped = pruning_wrapper.wrap(model, prunable=prunable)
        pruning_wrapper.set_masks(wrapped, masks)
        return wrapped
    return build


@dataclasses.dataclass
class FinishedRun:
    """A finished transfer run, reopened from its workdir (see `open_run`)."""
    path: str
    provenance: dict
    identity: dict
    result: train.TrainResult
    dataset: data.DataSpec

    @property
    def key(self):
        return identity.key(self.identity)


def open_run(run_dir, data_dir=None) -> FinishedRun:
    """Reopens a finished transfer run (optionally with its TFDS data elsewhere).

    Raises RunNotFoundError when `run_dir` is not a transfer run or has not finished.
    """
    run_dir = os.path.abspath(run_dir)
    if not os.path.isfile(os.path.join(run_dir, PROVENANCE_FILE)):
        what = ("no such directory" if not os.path.exists(run_dir) else "a file" if
                os.path.isfile(run_dir) else f"{PROVENANCE_FILE} missing")
        raise RunNotFoundError(f"{run_dir!r} is not a transfer run ({what}; runs are made by "
                               "trainers/transfer.py or a study's transfer cell)")
    try:
        return _read_run(run_dir, data_dir)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise RunNotFoundError(f"transfer run {run_dir!r} is damaged: a record in it cannot "
                               f"be read ({type(e).__name__}: {str(e)[:120]})") from None


def _read_run(run_dir, data_dir):
    recorded = identity.read(run_dir)
    if recorded is None:
        raise RunNotFoundError(f"{run_dir!r} has no run record ({identity.IDENTITY_FILE}); "
                               "it was made by an older dwlt_tf -- rerun the transfer")
    if not os.path.isfile(os.path.join(run_dir, train.RESULT_FILE)):
        raise RunNotFoundError(f"transfer run {run_dir!r} has not finished "
                               f"({train.RESULT_FILE} missing); rerun the same transfer "
                               "command to resume it")
    provenance = files.read_json(os.path.join(run_dir, PROVENANCE_FILE))
    fields = dict(provenance["dataset_spec"])
    if fields.get("classes") is not None:
        fields["classes"] = tuple(fields["classes"])
    if data_dir and fields["name"] != "imagefolder":
        fields["data_dir"] = data_dir
    result = train.TrainResult.from_json(files.read_json(os.path.join(run_dir,
                                                                      train.RESULT_FILE)))
    return FinishedRun(run_dir, provenance, recorded, result, data.DataSpec(**fields))


def _same_inputs(run: FinishedRun, splits, masks, weights_meta):
    """The inputs on disk now are the ones the run was trained with (else: an error)."""
    now = identity.canonical({"dataset": splits.identity, **inputs(weights_meta, masks)})
    before = {k: run.identity.get(k) for k in now}
    if now != before:
        changes = "\n".join(f"  {line}" for line in identity.differences(before, now))
        raise identity.RunIdentityError(
            f"the inputs of transfer run {run.path} changed since it was trained:\n{changes}\n"
            f"(weights {run.provenance['pretrained']}, ticket {run.provenance['ticket']}); "
            "its checkpoints would be paired with other masks, weights or data")


def load_best(run: FinishedRun, which, splits):
    """The model of a finished transfer run with its best-SA ("sa") or best-RA ("ra")
    weights, after checking its inputs on disk are still the ones it was trained with."""
    if which not in ("sa", "ra"):
        raise ValueError(f"which must be 'sa' or 'ra', got {which!r}")
    provenance = run.provenance
    masks = tickets.load(provenance["ticket"])[0] if provenance["ticket"] else None
    source = convert.load_converted(provenance["pretrained"])
    _same_inputs(run, splits, masks, source.meta)
    model = model_fn(source, masks, splits, seed=0)()
    path = os.path.join(run.path, f"best_{which}", "ckpt")
    try:
        status = tf.train.Checkpoint(model=model).read(path)
        status.assert_existing_objects_matched().expect_partial()
    except (tf.errors.OpError, AssertionError, ValueError) as e:
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        raise RunNotFoundError(f"transfer run {run.path!r}: its best-{which.upper()} "
                               f"checkpoint cannot be read ({first[:160]})") from None
    return model, provenance, masks
