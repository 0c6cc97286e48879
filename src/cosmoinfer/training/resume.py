"""``resume=true``: the run being continued must be the run that wrote the checkpoint.

A checkpoint carries its run's configuration under ``checkpoint["cosmoinfer"]`` (model, loss,
optimizer, scheduler, seed, and the data: fields, parameters, priors, split, normalisation). Resuming
it under another configuration would silently mix two runs (Lightning restores the optimizer state
whatever ``optimizer.lr`` says, the split comes from the checkpoint, ...), so every difference is
refused with one line naming the key, the current value and the stored one:

- :func:`check_resume_config`: what the config alone decides (model, loss, optimizer, scheduler,
  seed, data fields / params / suite / set, and the split it would draw); runs before any data is read;
- :func:`check_resume_data`: what the data decides once it is open (the priors of its manifest, the
  map size, the normalisation statistics of the training split, i.e. the data and ``log_fields``);
  runs before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cosmoinfer.data.splits import SPLITS, load_split, split_by_simulation
from cosmoinfer.errors import InputError
from cosmoinfer.models.network import LATER_DEFAULTS


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()
#: Keys compared first: a different loss or architecture is named as such, not by its first option.
_FIRST = ("name", "_target_", "arch")


def _short(value) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def first_difference(current, stored, key: str) -> tuple[str, object, object] | None:
    """The first ``(key, current, stored)`` where two plain-data trees differ (dotted keys), or None."""
    if isinstance(current, dict) and isinstance(stored, dict):
        for k in sorted(set(current) | set(stored), key=lambda k: (k not in _FIRST, str(k))):
            found = first_difference(current.get(k, _UNSET), stored.get(k, _UNSET), f"{key}.{k}")
            if found:
                return found
        return None
    if isinstance(current, (list, tuple)) and isinstance(stored, (list, tuple)):
        if len(current) != len(stored):
            return key, current, stored
        for i, (a, b) in enumerate(zip(current, stored)):
            found = first_difference(a, b, f"{key}[{i}]")
            if found:  # name the entry inside a list of mappings (priors), else the whole list
                return found if isinstance(a, dict) and isinstance(b, dict) else (key, current, stored)
        return None
    if current == stored and isinstance(current, bool) == isinstance(stored, bool):
        return None
    return key, current, stored


def _refuse(path, key: str, current, stored) -> InputError:
    return InputError(path, f"resume=true: {key}={_short(current)} differs from {key}={_short(stored)} stored in "
                            f"this checkpoint of the run; resume with the run's own settings (drop the override), "
                            f"or train into a new out_dir")


def _split_ids(split: dict) -> dict:
    return {k: sorted(int(i) for i in split.get(k, [])) for k in SPLITS}


def _check_split(data_cfg, stored: dict, path) -> None:
    """The split the config would draw (or read from ``data.split_file``) must be the checkpoint's."""
    if not stored or "n_sims" not in stored:
        return
    split_file = data_cfg.get("split_file")
    if split_file:
        if _split_ids(load_split(split_file)) != _split_ids(stored):
            raise InputError(path, f"resume=true: data.split_file={split_file} holds another train/val/test split "
                                   f"than the one stored in this checkpoint of the run; drop data.split_file, or "
                                   f"train into a new out_dir")
        return
    seed = data_cfg.get("split_seed", 0)
    fractions = [float(x) for x in (data_cfg.get("split_fractions") or (0.9, 0.05, 0.05))]
    drawn = split_by_simulation(int(stored["n_sims"]), fractions, int(seed))
    if _split_ids(drawn) == _split_ids(stored):
        return
    if stored.get("fractions") is not None and not np.allclose(fractions, stored["fractions"]):
        raise _refuse(path, "data.split_fractions", fractions, list(stored["fractions"]))
    if stored.get("seed") is not None and int(seed) != int(stored["seed"]):
        raise _refuse(path, "data.split_seed", seed, stored["seed"])
    raise InputError(path, "resume=true: the run was trained on another train/val/test split than data.split_seed "
                           "and data.split_fractions draw (from a split file?); pass data.split_file=<the run's "
                           "split.json>, or train into a new out_dir")


def check_resume_config(cfg, configs: dict, dm, meta: dict, path: Path) -> None:
    """Refuse ``resume=true`` when the config differs from the one stored in the checkpoint ``path``.

    Args:
        cfg: the composed train config.
        configs: the current ``{"model", "loss", "optimizer", "scheduler"}`` as plain data.
        dm: the (not yet set up) data module built from ``cfg.data``.
        meta: the checkpoint's ``cosmoinfer`` metadata.
        path: the checkpoint, named in the error.
    """
    for group, current in configs.items():
        if group in meta:
            stored = meta[group]
            if group == "model" and isinstance(current, dict) and isinstance(stored, dict):
                # keys added later (the Bayesian head, view averaging): absent in older runs means their default
                current, stored = {**LATER_DEFAULTS, **current}, {**LATER_DEFAULTS, **stored}
            found = first_difference(current, stored, group)
            if found:
                raise _refuse(path, *found)
    if meta.get("seed") is not None and int(cfg.seed) != int(meta["seed"]):
        raise _refuse(path, "seed", int(cfg.seed), meta["seed"])
    transfer = cfg.get("transfer") or {}
    ckpt, stored = transfer.get("checkpoint"), meta.get("transfer") or {}
    current_src = str(Path(ckpt).resolve()) if ckpt else None
    if current_src != stored.get("checkpoint"):
        raise _refuse(path, "transfer.checkpoint", current_src, stored.get("checkpoint"))
    if ckpt and bool(transfer.get("freeze", True)) != bool(stored.get("freeze")):
        raise _refuse(path, "transfer.freeze", bool(transfer.get("freeze", True)), stored.get("freeze"))
    data = meta.get("data") or {}
    for key, current, stored in (("data.fields", dm.fields, data.get("fields")),
                                 ("data.params", dm.param_names, data.get("param_names")),
                                 ("data.suite", dm.suite, data.get("suite")), ("data.set", dm.set, data.get("set"))):
        if stored is not None and first_difference(current, stored, key):
            raise _refuse(path, key, current, stored)
    _check_split(cfg.data, data.get("split") or {}, path)


def check_resume_data(dm, meta: dict, path: Path) -> None:
    """After ``dm.setup``: the data's priors, map size and normalisation must be the run's."""
    data = meta.get("data") or {}
    current = dm.state()
    if data.get("priors") is not None:
        found = first_difference(current["priors"], data["priors"], "priors")
        if found:
            raise InputError(path, f"resume=true: the data's {found[0]}={_short(found[1])} (from its manifest) "
                                   f"differs from the {found[0]}={_short(found[2])} stored in this checkpoint; "
                                   f"resume with the run's data and data.manifest, or train into a new out_dir")
    if data.get("grid") is not None and int(current["grid"]) != int(data["grid"]):
        raise InputError(path, f"resume=true: the maps are {current['grid']}x{current['grid']} pixels, the run was "
                               f"trained on {data['grid']}x{data['grid']}; resume on the run's data, or train into "
                               f"a new out_dir")
    stored = data.get("normalizer")
    if not stored:
        return
    now = current["normalizer"]
    fields = list(dm.fields)
    if [bool(x) for x in now["log"]] != [bool(x) for x in stored["log"]]:
        raise _refuse(path, "data.log_fields", [f for f, lg in zip(fields, now["log"]) if lg],
                      [f for f, lg in zip(fields, stored["log"]) if lg])
    if not np.allclose(now["offset"], stored["offset"]):
        raise _refuse(path, "data.log_offset", dict(zip(fields, now["offset"])), dict(zip(fields, stored["offset"])))
    if not (np.allclose(now["mean"], stored["mean"], rtol=1e-5, atol=1e-6)
            and np.allclose(now["std"], stored["std"], rtol=1e-5, atol=1e-6)):
        where = "data.h5_path" if dm.h5_path else "data.root"
        raise InputError(path, f"resume=true: the training maps of {where}={dm.h5_path or dm.root} have other "
                               f"normalisation statistics (mean {np.round(now['mean'], 4).tolist()}) than the run "
                               f"stored in this checkpoint ({np.round(stored['mean'], 4).tolist()}): other data than "
                               f"the run was trained on; resume on the run's data, or train into a new out_dir")
