"""Transfer of a ticket (or the dense pre-trained model) to a downstream task.

The reference's recipe (`main_std_eval.py`, `main_adv_eval.py`): load the pre-trained
weights, apply the ticket's masks to the conv weights (every conv, as found by IMP),
put a fresh classifier for the downstream classes on top (torch.nn.Linear's default
init) and the downstream dataset's normalization constants in front, then train the
whole network -- standard or adversarial -- and report test SA/RA of the best-SA and
best-RA checkpoints selected on validation.

A transfer's identity is its training spec, the downstream data's identity, the
pre-trained weights' identity and the ticket's masks (by content); its workdir belongs
to that identity (see `identity.claim`). `runs.open_run` reopens a finished transfer
for evaluation, export or an audit.
"""
import dataclasses
import os
import warnings
from typing import Optional

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tf_keras

from dwlt_tf import convert, data, files, identity, runs, runtime, tickets, train


class TicketMismatchWarning(UserWarning):
    """A ticket's masks were found on other weights than the ones being transferred."""


def ticket_matches_weights(ticket_meta, weights_meta):
    """True/False when both record their source weights' sha256, else None (unknown)."""
    ticket_source = ticket_meta.get("source_sha256")
    weights_source = weights_meta.get("source_sha256")
    if not ticket_source or not weights_source:
        return None
    return ticket_source == weights_source


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


def load_inputs(pretrained_dir, ticket_dir):
    """(converted weights, masks or None, the ticket's meta) for a transfer, checked: weights
    that load, a ticket that fits them -- bad input named before any work."""
    masks, ticket_meta = (None, {}) if ticket_dir is None else tickets.load(ticket_dir)
    source = convert.load_converted(pretrained_dir)
    if masks is not None:
        _check_ticket_fits(masks, source, ticket_dir)
    return source, masks, ticket_meta


def run(pretrained_dir: str, ticket_dir: Optional[str], dataset: data.DataSpec,
        spec: train.TrainSpec, workdir: str, strategy=None, splits=None,
        overwrite: bool = False) -> train.TrainResult:
    """Transfers `ticket_dir`'s subnetwork (None: the dense model) of `pretrained_dir`.

    Resumable like `train.fit`; the workdir belongs to this transfer's identity (another
    one raises `identity.RunIdentityError` before any work unless `overwrite`).
    `<workdir>/transfer.json` records what was transferred.
    """
    source, masks, ticket_meta = load_inputs(pretrained_dir, ticket_dir)
    meta = source.meta
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
    run_inputs = runs.inputs(meta, masks)
    chief = runtime.is_chief(strategy or tf.distribute.get_strategy())  # the one that writes
    if chief:
        identity.claim(workdir, train.run_identity(spec, splits.identity, run_inputs, strategy),
                       overwrite, "transfer", resolved=train.run_identity(
                           spec, splits.identity, run_inputs, strategy, full=True))
    build = runs.model_fn(source, masks, splits, spec.seed)
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
    if chief:
        files.update_json(os.path.join(workdir, runs.PROVENANCE_FILE), provenance)
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
