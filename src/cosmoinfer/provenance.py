"""Where a result came from: the code version and the run details stored in ``predictions.h5``.

``cosmoinfer-evaluate`` writes :func:`run_details` as the JSON attribute ``run`` of every
``predictions.h5`` (see ``docs/predictions.md``); the report's headline box reads it back. Every
value comes from the checkpoints' own metadata (``meta["model"]``, ``meta["loss"]``,
``meta["data"]``), Lightning's ``epoch``/``global_step`` counters and the data actually evaluated,
so nothing depends on the config files of the current working directory.
"""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cosmoinfer import __version__
from cosmoinfer.data.meta import DataMeta

#: Version of the ``run`` attribute's layout.
RUN_VERSION = 1


@lru_cache(maxsize=1)
def git_describe() -> str | None:
    """``git describe --always --dirty`` of the repository holding this package, or None outside one."""
    here = Path(__file__).resolve().parent
    try:
        r = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty"], capture_output=True,
                           text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    out = r.stdout.strip()
    return out if r.returncode == 0 and out else None


def code_version() -> str:
    """``"0.1.0 (git 40ee4f3-dirty)"``, or just the package version where there is no git checkout."""
    g = git_describe()
    return f"{__version__} (git {g})" if g else __version__


def _plain(x: Any) -> Any:
    """Plain JSON types (tensors and numpy scalars to numbers)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
        return x.item()
    if isinstance(x, np.generic):
        return x.item()
    return x


def _load_counters(path: Path) -> dict | None:
    """Lightning's ``epoch`` and ``global_step`` of a checkpoint (weights memory-mapped, never pickled code)."""
    import torch

    if not path.is_file():
        return None
    ckpt = None
    for kw in ({"mmap": True}, {}):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, **kw)
            break
        except Exception:  # provenance is best effort: evaluation must never fail here
            continue
    if not isinstance(ckpt, dict) or "epoch" not in ckpt:
        return None
    out = {"epoch": int(ckpt["epoch"]), "global_step": int(ckpt.get("global_step", 0))}
    for name, state in (ckpt.get("callbacks") or {}).items():
        if str(name).startswith("EarlyStopping") and isinstance(state, dict) and state.get("stopped_epoch"):
            out["stopped_epoch"] = int(state["stopped_epoch"])
    return out


def checkpoint_epochs(path) -> dict:
    """Epochs behind one checkpoint: ``epochs_at_checkpoint`` (the epoch whose weights it holds,
    counted from 1) and ``epochs_trained`` (from ``last.ckpt`` next to it, when there is one)."""
    path = Path(path)
    out: dict = {}
    here = _load_counters(path)
    if here is not None:
        out["epochs_at_checkpoint"] = here["epoch"] + 1
        out["global_step"] = here["global_step"]
    last = _load_counters(path.with_name("last.ckpt")) if path.name != "last.ckpt" else here
    if last is not None:
        out["epochs_trained"] = last["epoch"] + 1
        if "stopped_epoch" in last:
            out["early_stopped"] = True
    return out


def run_details(models: Sequence, paths: Sequence, *, split: str, n_maps: int, n_sims: int,
                suite: str | None = None) -> dict:
    """The JSON ``run`` attribute of ``predictions.h5``: what was trained, on what, and for how long.

    ``models``: the loaded checkpoints (objects with ``meta``); ``paths``: their files, same order;
    ``split``, ``n_maps``, ``n_sims``, ``suite``: the data this file evaluates.
    """
    meta = models[0].meta
    d = getattr(models[0], "data", None) or DataMeta.from_dict(meta["data"])
    split_meta = d.split or {}
    per_sim = int(d.maps_per_sim or 0) or None
    sims = {k: len(split_meta[k]) for k in ("train", "val", "test") if isinstance(split_meta.get(k), list)}
    epochs = [checkpoint_epochs(p) for p in paths]
    out = {
        "run_version": RUN_VERSION,
        "code_version": code_version(),
        "model": _plain(meta.get("model")),
        "loss": _plain(meta.get("loss")),
        "seeds": [_plain(m.meta.get("seed")) for m in models],
        "n_networks": len(models),
        "epochs_trained": [e.get("epochs_trained") for e in epochs],
        "epochs_at_checkpoint": [e.get("epochs_at_checkpoint") for e in epochs],
        "training_data": {
            "suite": d.suite, "set": d.set, "fields": list(d.fields or []),
            "params": list(d.param_names or []), "grid": d.grid,
            "simulator": d.simulator_name if isinstance(d.simulator, dict) else d.simulator,
            "source": d.h5_path or d.manifest or d.root,
            "maps_per_sim": per_sim,
            "n_sims": {k: v for k, v in sims.items()},
            "n_maps": {k: v * per_sim for k, v in sims.items()} if per_sim else {},
        },
        "evaluated": {"suite": suite, "split": split, "n_maps": int(n_maps), "n_sims": int(n_sims)},
    }
    for key in ("width_refit", "head_refit", "transfer"):  # what happened after (or before) training
        if key in meta:
            out[key] = _plain(meta[key])
    return _plain(out)
