"""Load a cosmoinfer checkpoint safely: plain data and tensors only, never pickled code."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from cosmoinfer.data.meta import DataMeta
from cosmoinfer.data.priors import Prior
from cosmoinfer.data.transforms import Normalizer
from cosmoinfer.errors import InputError
from cosmoinfer.models.likelihoods import Likelihood, build_likelihood
from cosmoinfer.models.network import Network, build_network


@dataclass
class LoadedModel:
    """A network ready for inference, its likelihood head and the training run's metadata.

    ``meta``: the checkpoint's plain ``cosmoinfer`` dict (``model``, ``loss``, ``data``, ``seed``, ...);
    ``data``: its ``meta["data"]`` as a :class:`~cosmoinfer.data.meta.DataMeta`.
    """

    path: Path
    network: Network
    likelihood: Likelihood
    meta: dict
    data: DataMeta = None  # type: ignore[assignment]

    def __post_init__(self):
        if self.data is None:
            self.data = DataMeta.from_dict(self.meta["data"])

    @property
    def priors(self) -> list[Prior]:
        return list(self.data.priors)

    @property
    def param_names(self) -> list[str]:
        return list(self.data.param_names)

    @property
    def normalizer(self) -> Normalizer:
        return self.data.normalization


def read_checkpoint(path) -> dict:
    """``torch.load(weights_only=True)``: a checkpoint carrying arbitrary pickled objects is refused."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # the safe unpickler names the class it refused ("Unsupported global: GLOBAL os.system ..."); any
        # other failure (an unknown opcode, ...) means the bytes are no checkpoint at all
        refused = next((ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln), None)
        if refused:
            raise InputError(path, f"refused: the checkpoint holds pickled objects that are not plain data "
                             f"({refused[:160]})") from None
        raise InputError(path, "not a checkpoint: the file is unreadable as a PyTorch checkpoint (corrupt, "
                         "truncated, or another kind of file)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else "empty or cut short"
        raise InputError(path, f"not a checkpoint: the file is unreadable or truncated ({type(err).__name__}: "
                         f"{detail})") from None
    if not isinstance(ckpt, dict) or "cosmoinfer" not in ckpt or "state_dict" not in ckpt:
        raise InputError(path, "not a cosmoinfer checkpoint (no 'cosmoinfer' metadata or 'state_dict')")
    return ckpt


def load_error_detail(err: RuntimeError) -> str:
    """The telling line of a ``load_state_dict`` error (line 0 is a header), at most 200 characters."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[1] if len(lines) > 1 else (lines[0] if lines else type(err).__name__))[:200]


def check_finite_weights(state: dict, path) -> None:
    """Refuse a state dict with a NaN or inf entry (a diverged run): its predictions would all be NaN."""
    for name, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            n_bad = int((~torch.isfinite(value)).sum())
            raise InputError(path, f"the checkpoint holds non-finite weights ({n_bad} NaN/inf entries in {name}): "
                             f"the training diverged before it was saved; use an earlier checkpoint or retrain "
                             f"(e.g. with a lower optimizer.lr)")


def build_from_meta(meta: dict) -> tuple[Network, Likelihood]:
    """Rebuild the untrained network and likelihood described by checkpoint metadata."""
    data = DataMeta.from_dict(meta["data"])
    likelihood = build_likelihood(n_params=len(data.param_names), **meta["loss"])
    likelihood.set_width_scale(meta.get("width_scale"))  # fitted on validation maps (callbacks.refit_widths)
    network = build_network(in_channels=len(data.fields), grid=int(data.grid), n_outputs=likelihood.n_outputs,
                            **meta["model"])
    norm = data.normalizer
    if hasattr(network, "set_input_stats"):
        network.set_input_stats(torch.tensor(norm["mean"]), torch.tensor(norm["std"]), torch.tensor(norm["log"]))
    return network, likelihood


def load_checkpoint(path) -> LoadedModel:
    """Load ``path`` into a :class:`LoadedModel` in eval mode on the CPU."""
    ckpt = read_checkpoint(path)
    meta = ckpt["cosmoinfer"]
    try:
        network, likelihood = build_from_meta(meta)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(path, f"checkpoint metadata does not describe a model ({type(err).__name__}: {err})") from None
    state = {k[len("network."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("network.")}
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise InputError(path, f"weights do not fit the model config stored in the checkpoint "
                         f"({load_error_detail(err)})") from None
    check_finite_weights(state, path)
    network.eval()
    return LoadedModel(Path(path), network, likelihood, meta, DataMeta.from_dict(meta["data"]))
