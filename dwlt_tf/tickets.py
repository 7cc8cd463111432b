"""Ticket files: the masks of a sparse subnetwork plus what produced them.

A ticket is a directory holding `masks.npz` (one boolean array per pruned Keras layer,
in Keras kernel layout, keyed by the torchvision-style layer name) and `ticket.json`
(metadata: sparsity overall and per layer, source weights' sha256, IMP round, config,
...). IMP writes tickets, the converter writes them for reference (PyTorch) tickets, and
transfer, export and the study read them. Directories are written to a temporary name
and renamed into place, so a crash never leaves a half-written ticket.
"""
import hashlib
import os
import zipfile

import numpy as np

from dwlt_tf import errors, files

MASKS_FILE = "masks.npz"
META_FILE = "ticket.json"


class TicketError(errors.UserError, FileNotFoundError):
    """A path that is not a ticket, or a ticket that does not fit the model."""


def fingerprint(masks):
    """sha256 of the masks' content (names, shapes, bits): a ticket's identity."""
    digest = hashlib.sha256()
    for name in sorted(masks):
        mask = np.asarray(masks[name]).astype(bool)
        digest.update(f"{name}:{mask.shape}\n".encode())
        digest.update(np.packbits(mask, axis=None).tobytes())
    return digest.hexdigest()


def sparsity(masks):
    """Fraction of zeros over all masks together (conv1 and downsamples included)."""
    total = sum(int(m.size) for m in masks.values())
    zeros = sum(int(m.size - np.count_nonzero(m)) for m in masks.values())
    return zeros / total if total else 0.0


def layer_sparsity(masks):
    return {name: float(1.0 - np.count_nonzero(m) / m.size) for name, m in sorted(masks.items())}


def save(path, masks, meta=None):
    """Writes a ticket directory at `path` atomically; refuses to overwrite one."""
    if os.path.exists(path):
        raise FileExistsError(f"Ticket {path!r} already exists; tickets are never overwritten")
    if not masks:
        raise ValueError("A ticket needs at least one mask")
    meta = dict(meta or {})
    meta.update(sparsity=sparsity(masks), layer_sparsity=layer_sparsity(masks),
                num_weights=int(sum(m.size for m in masks.values())),
                masks_sha256=fingerprint(masks))
    with files.atomic_directory(path) as tmp:
        np.savez_compressed(os.path.join(tmp, MASKS_FILE),
                            **{name: np.asarray(m).astype(bool) for name, m in masks.items()})
        files.write_json(os.path.join(tmp, META_FILE), meta)
    return os.path.abspath(path)


def load(path):
    """Reads a ticket directory: returns (masks: {name: bool ndarray}, meta: dict)."""
    masks_path = os.path.join(path, MASKS_FILE)
    meta_path = os.path.join(path, META_FILE)
    if not os.path.isfile(masks_path) or not os.path.isfile(meta_path):
        what = ("no such directory" if not os.path.exists(path) else "a file" if
                os.path.isfile(path) else f"expected {MASKS_FILE} and {META_FILE} in it")
        raise TicketError(
            f"{path!r} is not a ticket ({what}; tickets are directories written by the IMP "
            "trainer, trainers/prune.py or trainers/convert_weights.py)")
    try:
        with np.load(masks_path) as archive:
            masks = {name: archive[name].astype(bool) for name in archive.files}
        meta = files.read_json(meta_path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise TicketError(f"ticket {path!r} is damaged ({type(e).__name__}: "
                          f"{str(e)[:120]}); recreate it") from None
    if not masks:
        raise TicketError(f"ticket {path!r} holds no masks")
    return masks, meta


def is_ticket(path):
    return os.path.isfile(os.path.join(path, MASKS_FILE))
