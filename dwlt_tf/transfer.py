"""Transfer of a ticket (or the dense pre-trained model) to a downstream task.

The reference's recipe (`main_std_eval.py`, `main_adv_eval.py`): load the pre-trained
weights, apply the ticket's masks to the conv weights (every conv, as found by IMP),
put a fresh classifier for the downstream classes on top (torch.nn.Linear's default
init) and the downstream dataset's normalization constants in front, then train the
whole network -- standard or adversarial -- and report test SA/RA of the best-SA and
best-RA checkpoints selected on validation.

A transfer's identity is its training spec, the downstream data's identity, the
pre-trained weights' identity and the ticket's masks (by content); its workdir belongs
to that identity (see `identity.claim`). `open_run` reopens a finished transfer for
evaluation or export after checking that its inputs on disk are still the ones it was
trained with.
"""
import dataclasses
import os
import warnings
from typing import Optional

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tf_keras

from dwlt_tf import (convert, data, errors, files, identity, models, pruning_wrapper, tickets,
                     train)

PROVENANCE_FILE = "transfer.json"


class RunNotFoundError(errors.UserError, FileNotFoundError):
    """A path that is not a finished transfer run."""


class TicketMismatchWarning(UserWarning):
    """A ticket's masks were found on other weights than the ones being transferred."""


def ticket_matches_weights(ticket_meta, weights_meta):
    """True/False when both record their source weights' sha256, else None (unknown)."""
    ticket_source = ticket_meta.get("source_sha256")
    weights_source = weights_meta.get("source_sha256")
    if not ticket_source or not weights_source:
        return None
    return ticket_source == weights_source


def inputs(weights_meta, masks) -> dict:
    """What a transfer starts from, by content: its part of the run identity."""
    return {"kind": "transfer", "pretrained": convert.weights_identity(weights_meta),
            "ticket": tickets.fingerprint(masks) if masks is not None else None}


def run_identity(pretrained_dir, ticket_dir, dataset_identity, spec) -> dict:
    """The identity `run` records for these inputs (the study keys its cells by it)."""
    masks = tickets.load(ticket_dir)[0] if ticket_dir else None
    return train.run_identity(spec, dataset_identity,
                              inputs(convert.load_meta(pretrained_dir), masks))


def model_fn(source: convert.Converted, masks, splits: data.Splits, seed, prunable=("conv",)):
    """Returns the function building the transfer model (inside a strategy scope) from the
    converted pre-trained weights `source` (`convert.load_converted`)."""
    weights = {layer.name: layer.get_weights() for layer in source.model.layers
               if layer.weights and layer.name not in ("fc", "normalize")}
    meta = source.meta
    mean, std = splits.spec.mean_std

    def build():
        tf_keras.utils.set_random_seed(seed)  # the new head's init
        model = models.build_resnet(meta["arch"], splits.num_classes, meta["stem"], mean, std,
                                    meta["base_width"])
        for layer in model.layers:
            if layer.name in weights:
                layer.set_weights(weights[layer.name])
        if masks is None:
            return model
        wrapped = pruning_wrapper.wrap(model, prunable=prunable)
        pruning_wrapper.set_masks(wrapped, masks)
        return wrapped
    return build


def _check_ticket_fits(masks, source: convert.Converted, ticket_dir):
    """A ticket of another architecture is bad input, named before any work."""
    kernels = {layer.name: tuple(layer.kernel.shape) for layer in source.model.layers
               if isinstance(layer, tf_keras.layers.Conv2D)}
    shapes = {name: tuple(m.shape) for name, m in masks.items()}
    if shapes != kernels:
        meta = source.meta
        missing = sorted(set(kernels) - set(shapes))[:3]
        extra = sorted(set(shapes) - set(kernels))[:3]
        wrong = sorted(n for n in set(kernels) & set(shapes) if kernels[n] != shapes[n])[:3]
        raise tickets.TicketError(
            f"ticket {ticket_dir!r} does not fit the pre-trained {meta['arch']} "
            f"({meta['stem']} stem, width {meta['base_width']}): missing masks {missing}, "
            f"unexpected {extra}, wrong shapes {wrong}")


def run(pretrained_dir: str, ticket_dir: Optional[str], dataset: data.DataSpec,
        spec: train.TrainSpec, workdir: str, strategy=None, splits=None,
        overwrite: bool = False) -> train.TrainResult:
    """Transfers `ticket_dir`'s subnetwork (None: the dense model) of `pretrained_dir`.

    Resumable like `train.fit`; the workdir belongs to this transfer's identity (another
    one raises `identity.RunIdentityError` before any work unless `overwrite`).
    `<workdir>/transfer.json` records what was transferred.
    """
    masks, ticket_meta = (None, {}) if ticket_dir is None else tickets.load(ticket_dir)
    source = convert.load_converted(pretrained_dir)
    meta = source.meta
    if masks is not None:
        _check_ticket_fits(masks, source, ticket_dir)
    matches = ticket_matches_weights(ticket_meta, meta)
    if matches is False:
        # Not an error: a reference ticket's masks are legitimately applied to weights
        # converted from another file of the same pre-training; but a mix-up (the masks
        # of one pre-training on another's weights) silently changes the experiment.
        warnings.warn(
            f"ticket {ticket_dir!r} was found on weights with sha256 "
            f"{ticket_meta['source_sha256'][:12]}..., but --pretrained={pretrained_dir!r} "
            f"holds weights converted from sha256 {meta['source_sha256'][:12]}...; "
            "transferring these masks onto these weights anyway", TicketMismatchWarning,
            stacklevel=2)
    splits = splits or data.load(dataset)
    run_inputs = inputs(meta, masks)
    identity.claim(workdir, train.run_identity(spec, splits.identity, run_inputs), overwrite,
                   "transfer")
    build = model_fn(source, masks, splits, spec.seed)
    provenance = {
        "pretrained": os.path.abspath(pretrained_dir),
        "pretrained_sha256": meta.get("source_sha256"),
        "pretraining": meta.get("pretraining", meta.get("format")),
        "ticket": os.path.abspath(ticket_dir) if ticket_dir else None,
        "ticket_sparsity": ticket_meta.get("sparsity", 0.0),
        "ticket_round": ticket_meta.get("round", 0),
        "ticket_source_sha256": ticket_meta.get("source_sha256"),
        "ticket_matches_pretrained": matches,
        "dataset": dataset.name, "data_rate": dataset.data_rate,
        "dataset_spec": dataclasses.asdict(dataset),
        "classes": list(dataset.classes) if dataset.classes else None,
        "class_names": list(splits.class_names), "mode": spec.mode,
        "arch": meta["arch"], "stem": meta["stem"], "base_width": meta["base_width"],
    }
    # Updated on every call (same identity): paths follow inputs that were moved; written
    # only when it changes, so a finished run is re-reported from a read-only copy.
    files.update_json(os.path.join(workdir, PROVENANCE_FILE), provenance)
    return train.fit(build, splits, spec, workdir, strategy, inputs=run_inputs)


def run_seeds(pretrained_dir: str, ticket_dir: Optional[str], dataset: data.DataSpec,
              spec: train.TrainSpec, seeds, workdir: str, strategy=None,
              overwrite: bool = False):
    """`run` once per seed (`spec.seed` replaced), each in `<workdir>/seed_<seed>`.
    Returns the results in the order of `seeds`."""
    splits = data.load(dataset)
    return [run(pretrained_dir, ticket_dir, dataset, dataclasses.replace(spec, seed=seed),
                os.path.join(workdir, f"seed_{seed}"), strategy, splits, overwrite)
            for seed in seeds]


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
        raise RunNotFoundError(f"{run_dir!r} is not a transfer run ({PROVENANCE_FILE} missing; "
                               "made by trainers/transfer.py or a study's transfer cell)")
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
    status = tf.train.Checkpoint(model=model).read(os.path.join(run.path, f"best_{which}",
                                                                "ckpt"))
    status.assert_existing_objects_matched().expect_partial()
    return model, provenance, masks
