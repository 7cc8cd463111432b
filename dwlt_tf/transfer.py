"""Transfer of a ticket (or the dense pre-trained model) to a downstream task.

The reference's recipe (`main_std_eval.py`, `main_adv_eval.py`): load the pre-trained
weights, apply the ticket's masks to the conv weights (every conv, as found by IMP),
put a fresh classifier for the downstream classes on top (torch.nn.Linear's default
init) and the downstream dataset's normalization constants in front, then train the
whole network -- standard or adversarial -- and report test SA/RA of the best-SA and
best-RA checkpoints selected on validation.
"""
import dataclasses
import os
import warnings
from typing import Optional

import dwlt_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf
import tf_keras

from dwlt_tf import convert, data, files, models, pruning_wrapper, tickets, train

PROVENANCE_FILE = "transfer.json"


def dataset_of(run_dir, data_dir=None):
    """The DataSpec a transfer run used (from its transfer.json); optionally another
    TFDS data_dir (the same data, elsewhere)."""
    provenance = files.read_json(os.path.join(run_dir, PROVENANCE_FILE))
    fields = dict(provenance["dataset_spec"])
    if fields.get("classes") is not None:
        fields["classes"] = tuple(fields["classes"])
    if data_dir and fields["name"] != "imagefolder":
        fields["data_dir"] = data_dir
    return data.DataSpec(**fields)


class TicketMismatchWarning(UserWarning):
    """A ticket's masks were found on other weights than the ones being transferred."""


def ticket_matches_weights(ticket_meta, weights_meta):
    """True/False when both record their source weights' sha256, else None (unknown)."""
    ticket_source = ticket_meta.get("source_sha256")
    weights_source = weights_meta.get("source_sha256")
    if not ticket_source or not weights_source:
        return None
    return ticket_source == weights_source


def model_fn(pretrained_dir, masks, splits: data.Splits, seed, prunable=("conv",)):
    """Returns the function building the transfer model (inside a strategy scope)."""
    source = convert.load_converted(pretrained_dir)
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
    return build, meta


def run(pretrained_dir: str, ticket_dir: Optional[str], dataset: data.DataSpec,
        spec: train.TrainSpec, workdir: str, strategy=None, splits=None) -> train.TrainResult:
    """Transfers `ticket_dir`'s subnetwork (None: the dense model) of `pretrained_dir`.

    Resumable like `train.fit`; `<workdir>/transfer.json` records what was transferred.
    """
    masks, ticket_meta = (None, {}) if ticket_dir is None else tickets.load(ticket_dir)
    meta = convert.load_meta(pretrained_dir)
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
    build, meta = model_fn(pretrained_dir, masks, splits, spec.seed)
    os.makedirs(workdir, exist_ok=True)
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
    path = os.path.join(workdir, PROVENANCE_FILE)
    if not os.path.exists(path):
        files.write_json(path, provenance)
    return train.fit(build, splits, spec, workdir, strategy)


def load_best(run_dir, which, splits):
    """The model of a finished transfer run with its best-SA ("sa") or best-RA ("ra") weights."""
    if which not in ("sa", "ra"):
        raise ValueError(f"which must be 'sa' or 'ra', got {which!r}")
    provenance = files.read_json(os.path.join(run_dir, PROVENANCE_FILE))
    masks = tickets.load(provenance["ticket"])[0] if provenance["ticket"] else None
    build, _ = model_fn(provenance["pretrained"], masks, splits, seed=0)
    model = build()
    status = tf.train.Checkpoint(model=model).read(os.path.join(run_dir, f"best_{which}", "ckpt"))
    status.assert_existing_objects_matched().expect_partial()
    return model, provenance, masks
