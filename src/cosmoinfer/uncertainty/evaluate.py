"""The body of ``cosmoinfer-evaluate``: checkpoints + data -> ``predictions.h5``."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from omegaconf import DictConfig, ListConfig

from cosmoinfer.data.datamodule import CMDDataModule
from cosmoinfer.data.meta import DataMeta, split_ids
from cosmoinfer.errors import InputError, ensure_writable_dir
from cosmoinfer.posterior.predictions import write_predictions
from cosmoinfer.uncertainty.checkpoints import resolve_checkpoints
from cosmoinfer.uncertainty.predictor import Posterior, Predictor

log = logging.getLogger("cosmoinfer.evaluate")

METHODS = ("single", "ensemble", "mc_dropout", "ensemble_mc_dropout", "bnn")


#: ``data.*`` keys of the train config that define the model or its split: they must agree with the
#: checkpoint (a mismatch is an :class:`InputError` naming the key and both values).
MODEL_KEYS = ("fields", "params", "label", "log_fields", "log_offset", "split_seed", "split_fractions")
#: ``data.*`` keys that choose the data to evaluate on (a value equal to the checkpoint's is its own data).
DATA_KEYS = ("root", "roots", "suite", "suites", "set", "h5_path", "manifest")
#: ``data.*`` keys that only shape the loading: ``eval_batch_size`` (default ``batch_size``, then 64),
#: ``num_workers`` and ``pin_memory`` are used; ``batch_size`` only as that default; ``validate`` is
#: accepted and has no effect (every evaluated map is checked as it is predicted, see
#: :meth:`CMDDataModule.checked_batches`); ``augment`` is ignored (evaluation never augments at random;
#: ``tta=true`` averages the 8 views);
#: ``split_file`` must hold the checkpoint's split on its own data and is the split on other data.
LOADER_KEYS = ("batch_size", "eval_batch_size", "num_workers", "pin_memory", "validate", "augment", "split_file")


def _given(d, key: str):
    v = d.get(key) if d is not None else None
    if isinstance(v, (DictConfig, ListConfig)):
        from omegaconf import OmegaConf

        v = OmegaConf.to_container(v, resolve=True)
    return v


def _mismatch(path, key: str, ckpt, given) -> InputError:
    return InputError(path, f"data.{key}={given} does not match the checkpoint's data.{key}={ckpt} "
                            f"(drop the override, or evaluate a checkpoint trained with it)")


def check_data_config(d, meta: DataMeta | dict, path) -> None:
    """``data.*`` keys that define the model or the split must agree with the checkpoint's ``meta``.

    ``d`` is ``cfg.data``; ``meta`` a checkpoint's :class:`DataMeta` (or its ``meta["data"]`` dict);
    ``path`` the checkpoint (named in the error). Unset (null) keys are not checked;
    ``log_fields=auto`` is checked once the data is open (:func:`_check_auto_log_fields`).
    """
    meta = DataMeta.coerce(meta)
    fields, split = list(meta.fields), meta.split or {}
    for key, ckpt in (("fields", fields), ("params", list(meta.param_names))):
        v = _given(d, key)
        if v is not None:
            v = [v] if isinstance(v, str) else [str(x) for x in v]
            if v != ckpt:
                raise _mismatch(path, key, ckpt, v)
    v = _given(d, "label")
    if v is not None and str(v) != meta.param_names[0]:
        raise _mismatch(path, "label", meta.param_names[0], v)
    v = _given(d, "split_seed")
    if v is not None and split.get("seed") is not None and int(v) != int(split["seed"]):
        raise _mismatch(path, "split_seed", split["seed"], v)
    v = _given(d, "split_fractions")
    if v is not None and split.get("fractions") is not None:
        ok = len(v) == len(split["fractions"]) and np.allclose(np.asarray(v, float), split["fractions"])
        if not ok:
            raise _mismatch(path, "split_fractions", split["fractions"], v)
    logs = meta.log_flags
    v = _given(d, "log_fields")
    if v is not None and v != "auto":
        v = [v] if isinstance(v, str) else [str(x) for x in v]
        if [f in v for f in fields] != logs or any(f not in fields for f in v):
            raise _mismatch(path, "log_fields", [f for f, lg in zip(fields, logs) if lg], v)
    v = _given(d, "log_offset")
    if v is not None:
        ckpt = {f: float(o) for f, o in zip(fields, meta.normalizer["offset"])}
        if not isinstance(v, dict) or any(f not in ckpt for f in v) or not all(
                np.isclose(float(v.get(f, 0.0)), o, rtol=1e-6, atol=0) for f, o in ckpt.items()):
            raise _mismatch(path, "log_offset", {f: o for f, o in ckpt.items() if o}, v)


def _check_auto_log_fields(d, meta: DataMeta, dm, path) -> None:
    """``data.log_fields=auto``: log10 every positive field of the data, as the checkpoint did."""
    if _given(d, "log_fields") != "auto":
        return
    positive = getattr(dm.source, "positive", None)
    if positive is not None and [bool(p) for p in positive] != meta.log_flags:
        fields = list(meta.fields)
        raise InputError(path, f"data.log_fields=auto (log10 of {[f for f, p in zip(fields, positive) if p]}) does "
                               f"not match the checkpoint's data.log_fields="
                               f"{[f for f, lg in zip(fields, meta.log_flags) if lg]}")


def _same_path(given, stored) -> bool:
    if given is None:
        return True
    if stored is None:
        return False
    return Path(str(given)).expanduser().resolve() == Path(str(stored)).expanduser().resolve()


def _other(d, meta: DataMeta, key: str) -> bool:
    """Whether ``data.<key>`` is given and names other data than the checkpoint's."""
    v, stored = _given(d, key), getattr(meta, key)
    if v is None:
        return False
    if key in ("root", "h5_path", "manifest"):
        return not _same_path(v, stored)
    if key == "roots":
        return stored is None or len(v) != len(stored) or not all(_same_path(a, b) for a, b in zip(v, stored))
    if key == "suites":
        return [str(x) for x in v] != list(stored or [])
    return str(v) != str(stored)


def build_eval_datamodule(cfg: DictConfig, meta: DataMeta | dict, path=None) -> CMDDataModule:
    """The training data and split by default; other CMD-layout data where ``cfg.data`` says so.

    ``meta`` is a checkpoint's :class:`DataMeta` (or its ``meta["data"]`` dict): fields,
    parameters, normalisation statistics and split of the training run; ``path`` the checkpoint,
    named in errors. ``cfg.data`` takes every key of the train data config (:data:`MODEL_KEYS` must
    agree with the checkpoint, see :func:`check_data_config`). On other data (``data.root``/
    ``suite``/``set``/``h5_path``/``manifest``/``suites`` given with values other than the
    checkpoint's) the split is recomputed with the training run's seed and fractions (or read from
    ``data.split_file``), so use ``split=all`` to evaluate every map.
    """
    meta = DataMeta.coerce(meta)
    d = cfg.get("data") or {}
    where = path or "checkpoint"
    check_data_config(d, meta, where)
    split = meta.split or {}
    batch = _given(d, "eval_batch_size") or _given(d, "batch_size") or 64
    common = dict(set=_given(d, "set") or meta.set, fields=meta.fields, split_seed=split.get("seed", 0),
                  eval_batch_size=int(batch), num_workers=int(_given(d, "num_workers") or 0),
                  pin_memory=bool(_given(d, "pin_memory") or False), normalizer=meta.normalizer, augment=False,
                  validate=str(_given(d, "validate") or "all"))
    if split.get("fractions"):
        common["split_fractions"] = split["fractions"]
    split_file = _given(d, "split_file")
    if meta.is_suite_classifier:
        from cosmoinfer.data.classification import SuiteClassificationDataModule

        same = not any(_other(d, meta, k) for k in ("root", "roots", "suites", "set"))
        root = _given(d, "root")
        dm = SuiteClassificationDataModule(
            suites=list(_given(d, "suites") or meta.suites), root=root or meta.root,
            roots=_given(d, "roots") or (None if root else meta.roots), label=meta.param_names[0],
            split=meta.split if same else None, split_file=None if same else split_file, **common)
    else:
        if _given(d, "suites") or _given(d, "roots"):
            raise InputError("data.suites", "only applies to checkpoints of a suite classifier; use data.suite "
                                            "and data.root")
        same = not any(_other(d, meta, k) for k in ("root", "h5_path", "suite", "set", "manifest"))
        dm = CMDDataModule(
            root=_given(d, "root") or (meta.root if not _given(d, "h5_path") else None),
            suite=_given(d, "suite") or meta.suite, params=meta.param_names,
            manifest=_given(d, "manifest") or (meta.manifest if same else None),
            h5_path=_given(d, "h5_path") or (meta.h5_path if same else None),
            split=meta.split if same else None, split_file=None if same else split_file, **common)
    if same and split_file:
        from cosmoinfer.data.splits import load_split

        if split_ids(load_split(split_file)) != meta.split_ids():
            raise InputError(split_file, f"data.split_file holds another train/val/test split than the checkpoint "
                                         f"{where} was trained on (drop data.split_file to use the checkpoint's)")
    dm.setup("test")
    _check_auto_log_fields(d, meta, dm, where)
    return dm


def progress(batches: Iterable, total: int, every: float = 0.1) -> Iterator:
    """Pass ``batches`` through, showing progress: a tqdm bar on a terminal, else log lines.

    Off a terminal (a pipeline stage's log file) it logs ``evaluating k/total batches (t s)``
    about every ``every`` of the way, so logs on disk hold no bar debris.
    """
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        yield from tqdm(batches, total=total, desc="evaluating", unit="batch", leave=False)
        return
    step = max(1, int(round(total * every)))
    t0 = time.time()
    for k, batch in enumerate(batches, start=1):
        yield batch
        if k % step == 0 or k == total:
            log.info("evaluating %d/%d batches (%.0f s)", k, total, time.time() - t0)


def evaluate(cfg: DictConfig) -> Path:
    ensure_writable_dir(cfg.out_dir, "out_dir")  # before any checkpoint is read or map predicted
    from cosmoinfer.training.config_checks import check_device

    check_device(cfg.get("device", "cpu"), "device")
    method = cfg.evaluator.name
    if method not in METHODS:
        raise InputError("evaluator.name", f"unknown evaluator {method!r}; choose one of {list(METHODS)}")
    paths = resolve_checkpoints(cfg.checkpoints)
    if not paths:
        raise InputError("checkpoints", "no checkpoint given; pass a path, a list, a folder or a glob")
    if method in ("single", "mc_dropout", "bnn") and len(paths) != 1:
        fix = {"single": "evaluator=ensemble", "mc_dropout": "evaluator=ensemble_mc_dropout"}.get(
            method, "one BNN checkpoint")
        raise InputError(paths[0], f"evaluator={method} takes one checkpoint, got {len(paths)}; use {fix}")
    stochastic = "mc_dropout" in method or method == "bnn"
    n_samples = int(cfg.evaluator.get("n_samples") or 0) if stochastic else 0
    if stochastic and n_samples < 2:
        what = "BNN evaluator needs at least 2 weight draws" if method == "bnn" else "MC dropout needs at least 2 passes"
        raise InputError("evaluator.n_samples", f"{what}, got {n_samples}")
    predictor = Predictor(paths, mc_samples=n_samples if method != "bnn" else 0, tta=bool(cfg.get("tta", False)),
                          seed=int(cfg.seed), device=str(cfg.get("device", "cpu")),
                          flow_samples=int(cfg.get("flow_samples") or 1000),
                          bnn_samples=n_samples if method == "bnn" else 0)
    meta = predictor.models[0].data
    dm = build_eval_datamodule(cfg, meta, paths[0])
    split = str(cfg.split)
    n_batches = len(dm.split_dataloader(split))
    if n_batches == 0:
        raise InputError("split", f"split {split!r} holds no maps")
    # every evaluated map is checked (NaN/inf, non-positive in a log10 field, map size, far outside the
    # training range) as it is read, before normalisation: the first bad one stops the run with one line
    # naming its file, index and field, and nothing is written
    grid = int(meta.grid)
    batches = progress(dm.checked_batches(split, expected_hw=(grid, grid)), n_batches)
    post = predictor.predict_batches(batches, target_priors=dm.priors)
    extra = simulator_datasets(cfg, dm, split, post)
    out = Path(cfg.out_dir) / "predictions.h5"
    from cosmoinfer.provenance import run_details

    run = run_details(predictor.models, paths, split=split, n_maps=len(post.mean),
                      n_sims=len(np.unique(post.sim_id)), suite=dm.suite)  # the report's headline box
    write_posterior(out, post, predictor, method=method, split=split, n_members=len(paths),
                    n_samples=n_samples, extra=extra, checkpoints=[str(p) for p in paths], suite=dm.suite,
                    tta=predictor.tta, run=run)
    log.info("wrote %s (%d maps, %s)", out, len(post.mean), method)
    print(f"predictions: {out}")
    return out


def simulator_datasets(cfg: DictConfig, dm: CMDDataModule, split: str, post: Posterior) -> dict:
    """Datasets that the simulator of the evaluated maps adds to ``predictions.h5``, or ``{}``.

    The simulator is named in the data's manifest (``simulator.name``); its hook comes from
    :func:`cosmoinfer.simulators.extra_datasets_hook` (for ``grf`` maps: the exact posterior of every
    map, see :func:`cosmoinfer.simulators.grf_exact_datasets.extra_datasets`). ``exact_posterior=true``
    on maps of a simulator without one is an :class:`InputError`.
    """
    from cosmoinfer.simulators import extra_datasets_hook

    manifest = getattr(dm.source, "manifest", None)
    sim_cfg = (getattr(manifest, "extra", None) or {}).get("simulator") if manifest is not None else None
    hook = extra_datasets_hook(sim_cfg.get("name") if isinstance(sim_cfg, dict) else None)
    if hook is not None:
        return hook(cfg, dm, split, post)
    if str(cfg.get("exact_posterior", "auto")).lower() not in ("auto", "false", "none", "0"):
        raise InputError(dm.source.root, "exact_posterior=true needs maps from the grf simulator")
    return {}


def write_posterior(path: Path, post: Posterior, predictor: Predictor, method: str, split: str,
                    n_members: int, n_samples: int, extra: dict | None = None, **attrs) -> Path:
    return write_predictions(
        path, truth=post.truth, mean=post.mean, std=post.std, std_aleatoric=post.std_aleatoric,
        std_epistemic=post.std_epistemic, sim_id=post.sim_id, param_names=post.param_names, method=method,
        split=split, member_mean=post.member_mean, member_std=post.member_std, cov=post.cov,
        n_members=n_members, n_samples=n_samples or None, priors=predictor.priors, extra_datasets=extra or None,
        extra_attrs=attrs, task=post.task, predictive=post.predictive)


def __getattr__(name: str):
    if name == "exact_posterior_datasets":  # its former home: the grf simulator's hook now
        from cosmoinfer.simulators.grf_exact_datasets import extra_datasets

        return extra_datasets
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
