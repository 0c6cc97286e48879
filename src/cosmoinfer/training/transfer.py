"""Start a network's backbone from another run's checkpoint (``transfer.checkpoint``), optionally frozen.

Transfer learning as Lightning users know it (a pretrained backbone, a new head): the backbone's
weights (``network.backbone.*``, BatchNorm running statistics included) come from a trained
checkpoint of the same architecture on the same fields; the head is built fresh for this run's
loss, so a network trained with a Gaussian head can carry a flow head (``loss=flow``) next.

With ``transfer.freeze=true`` the backbone's parameters take no gradient and the backbone stays in
eval mode during training (:meth:`cosmoinfer.models.network.Network.freeze_backbone`): BatchNorm
normalises with its running statistics, so the head is trained on exactly the features it will see
at evaluation. A head that predicts a narrow, curved posterior learns to cover the batch-statistics
noise of train-mode features otherwise (see :mod:`cosmoinfer.training.head_refit`).

The source's training simulations must not be this run's validation or test simulations (same
data root): the backbone would have seen the maps it is judged on; that is refused.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from cosmoinfer.errors import InputError
from cosmoinfer.models.network import Network
from cosmoinfer.training.checkpoint import check_finite_weights, load_error_detail, read_checkpoint

log = logging.getLogger(__name__)

KEY = "transfer.checkpoint"


def _same_data(src: dict, dm) -> bool:
    """True if the source read its maps from this run's ``data.root``."""
    root, ours = src.get("root"), getattr(dm, "root", None)
    return root is not None and ours is not None and Path(root).resolve() == Path(ours).resolve()


def check_split(src_data: dict, dm, path: Path) -> None:
    """Refuse a source trained on simulations that are in this run's val or test split (same data root)."""
    split = src_data.get("split") or {}
    if not _same_data(src_data, dm) or not split.get("train"):
        return
    seen = set(int(i) for i in split["train"])
    for name in ("val", "test"):
        overlap = seen & set(int(i) for i in (dm.split or {}).get(name, []))
        if overlap:
            raise InputError(path, f"{KEY}: its backbone was trained on {len(overlap)} simulations of this run's "
                                   f"{name} split (same data.root); use the same data.split_fractions and seed, "
                                   f"or another data set")


def load_backbone(network: Network, path, dm, freeze: bool) -> dict:
    """Copy the backbone weights of checkpoint ``path`` into ``network``; freeze them if ``freeze``.

    ``dm``: this run's set-up data module (its fields, grid, normalisation and split are checked against
    the source's). Returns the record stored as ``meta["transfer"]``: ``checkpoint`` (absolute path),
    ``freeze``, ``source_loss`` (the source's likelihood name) and ``source_epoch``.
    Raises :class:`~cosmoinfer.errors.InputError` (naming the file) if the checkpoint is unreadable,
    its fields or architecture differ, or its training simulations are this run's val/test ones.
    """
    path = Path(path).resolve()
    ckpt = read_checkpoint(path)
    meta = ckpt["cosmoinfer"]
    src_data = meta.get("data", {})
    if list(src_data.get("fields", [])) != list(dm.fields):
        raise InputError(path, f"{KEY}: the source was trained on fields {src_data.get('fields')}, this run reads "
                               f"{list(dm.fields)}")
    src_arch = meta.get("model", {}).get("arch")
    if src_arch != network.arch:
        raise InputError(path, f"{KEY}: the source is model.arch={src_arch}, this run builds {network.arch}")
    check_split(src_data, dm, path)
    prefix = "network.backbone."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    check_finite_weights(state, path)
    try:
        network.backbone.load_state_dict(state)
    except RuntimeError as err:
        raise InputError(path, f"{KEY}: the backbone weights do not fit this run's model.* options "
                               f"({load_error_detail(err)})") from None
    norm = src_data.get("normalizer") or {}
    ours = dm.normalizer
    for name in ("mean", "std"):
        theirs = norm.get(name)
        if theirs is not None and not all(math.isclose(float(a), float(b), rel_tol=1e-4, abs_tol=1e-6)
                                          for a, b in zip(theirs, getattr(ours, name))):
            log.warning("%s: the source normalised its maps with %s %s, this run with %s: the backbone sees "
                        "shifted inputs", path, name, list(theirs), list(getattr(ours, name)))
    if freeze:
        network.freeze_backbone()
    log.info("backbone from %s (%s head, epoch %s)%s", path, meta.get("loss", {}).get("name"), ckpt.get("epoch"),
             ", frozen in eval mode" if freeze else "")
    return {"checkpoint": str(path), "freeze": bool(freeze), "source_loss": meta.get("loss", {}).get("name"),
            "source_epoch": ckpt.get("epoch")}
