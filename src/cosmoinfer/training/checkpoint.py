"""Load a cosmoinfer checkpoint safely: plain data and tensors only, never pickled code."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from cosmoinfer.data.priors import Prior
from cosmoinfer.data.transforms import Normalizer
from cosmoinfer.errors import InputError
from cosmoinfer.models.likelihoods import Likelihood, build_likelihood
from cosmoinfer.models.network import Network, build_network


@dataclass
class LoadedModel:
    """A network ready for inference, its likelihood head and the training run's metadata."""

    path: Path
    network: Network
    likelihood: Likelihood
    meta: dict

    @property
    def priors(self) -> list[Prior]:
        return [Prior.from_dict(p) for p in self.meta["data"]["priors"]]

    @property
    def param_names(self) -> list[str]:
        return list(self.meta["data"]["param_names"])

    @property
    def normalizer(self) -> Normalizer:
        return Normalizer.from_dict(self.meta["data"]["normalizer"])


def read_checkpoint(path) -> dict:
    """``torch.load(weights_only=True)``: a checkpoint carrying arbitrary pickled objects is refused."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(path, f"refused: the checkpoint holds pickled objects that are not plain data "
                         f"({first[:160]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise InputError(path, f"unreadable or truncated checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:160] if str(err) else ''})") from None
    if not isinstance(ckpt, dict) or "cosmoinfer" not in ckpt or "state_dict" not in ckpt:
        raise InputError(path, "not a cosmoinfer checkpoint (no 'cosmoinfer' metadata or 'state_dict')")
    return ckpt


def build_from_meta(meta: dict) -> tuple[Network, Likelihood]:
    """Rebuild the untrained network and likelihood described by checkpoint metadata."""
    likelihood = build_likelihood(n_params=len(meta["data"]["param_names"]), **meta["loss"])
    network = build_network(in_channels=len(meta["data"]["fields"]), grid=int(meta["data"]["grid"]),
                            n_outputs=likelihood.n_outputs, **meta["model"])
    norm = meta["data"]["normalizer"]
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
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(err).__name__)  # line 0: a header
        raise InputError(path, f"weights do not fit the model config stored in the checkpoint "
                         f"({detail[:200]})") from None
    network.eval()
    return LoadedModel(Path(path), network, likelihood, meta)
