"""The body of ``cosmoinfer-evaluate``: checkpoints + data -> ``predictions.h5``."""

from __future__ import annotations

import glob
import logging
import re
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, ListConfig

from cosmoinfer.data.datamodule import CMDDataModule
from cosmoinfer.errors import InputError
from cosmoinfer.uncertainty.predictor import Posterior, Predictor

log = logging.getLogger("cosmoinfer.evaluate")

METHODS = ("single", "ensemble", "mc_dropout", "ensemble_mc_dropout")


def _natural_key(path: Path) -> list:
    """Sort ``multirun/2`` before ``multirun/10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def resolve_checkpoints(spec) -> list[Path]:
    """A checkpoint path, a list of them, a folder (``*/checkpoints/best.ckpt`` under it, e.g. a
    Hydra multirun folder, in job order, or its own ``checkpoints/best.ckpt``) or a glob pattern.

    A checkpoint named twice is an :class:`InputError` (it would count one member twice)."""
    items = list(spec) if isinstance(spec, (list, tuple, ListConfig)) else [spec]
    paths: list[Path] = []
    for item in items:
        item = str(item)
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("checkpoints/best.ckpt")) or sorted(p.glob("**/checkpoints/best.ckpt"),
                                                                       key=_natural_key)
            if not found:
                raise InputError(p, "no checkpoints/best.ckpt found in this folder or below it")
            paths.extend(found)
        elif any(ch in item for ch in "*?["):
            found = sorted((Path(x) for x in glob.glob(item, recursive=True)), key=_natural_key)
            if not found:
                raise InputError(item, "the checkpoint pattern matches no file")
            paths.extend(found)
        else:
            if not p.is_file():
                raise InputError(p, "checkpoint not found")
            paths.append(p)
    seen: set = set()
    for p in paths:
        key = p.resolve()
        if key in seen:
            raise InputError(p, "this checkpoint is named twice; an ensemble member must appear once")
        seen.add(key)
    return paths


def build_eval_datamodule(cfg: DictConfig, meta: dict) -> CMDDataModule:
    """The training data and split by default; other CMD-layout data where ``cfg.data`` says so.

    ``meta`` is a checkpoint's ``meta["data"]``: fields, parameters, normalisation statistics and
    split of the training run. On other data (``data.root``/``suite``/``set``/``h5_path``/
    ``suites`` given) the split is recomputed with the training run's seed and fractions, so use
    ``split=all`` to evaluate every map.
    """
    d = cfg.get("data") or {}
    common = dict(set=d.get("set") or meta["set"], fields=meta["fields"], split_seed=meta["split"].get("seed", 0),
                  eval_batch_size=int(d.get("eval_batch_size") or 64), num_workers=int(d.get("num_workers", 0)),
                  normalizer=meta["normalizer"], augment=False, validate="all")
    if meta.get("split", {}).get("fractions"):
        common["split_fractions"] = meta["split"]["fractions"]
    if meta.get("datamodule") == "suite_classification":
        from cosmoinfer.data.classification import SuiteClassificationDataModule

        suites = list(d.get("suites") or meta["suites"])
        same = not (d.get("root") or d.get("suites") or d.get("set"))
        roots = None if d.get("root") else meta.get("roots")
        dm = SuiteClassificationDataModule(suites=suites, root=d.get("root") or meta.get("root"), roots=roots,
                                           label=meta["param_names"][0], split=meta["split"] if same else None,
                                           **common)
    else:
        if d.get("suites"):
            raise InputError("data.suites", "only applies to checkpoints of a suite classifier; use data.suite")
        same = not (d.get("root") or d.get("h5_path") or d.get("suite") or d.get("set"))
        root = d.get("root") or (meta.get("root") if not d.get("h5_path") else None)
        h5 = d.get("h5_path") or (meta.get("h5_path") if same else None)
        dm = CMDDataModule(
            root=root, suite=d.get("suite") or meta["suite"], params=meta["param_names"],
            manifest=d.get("manifest") or (meta.get("manifest") if same else None), h5_path=h5,
            split=meta["split"] if same else None, **common)
    dm.setup("test")
    return dm


def evaluate(cfg: DictConfig) -> Path:
    method = cfg.evaluator.name
    if method not in METHODS:
        raise InputError("evaluator.name", f"unknown evaluator {method!r}; choose one of {list(METHODS)}")
    paths = resolve_checkpoints(cfg.checkpoints)
    if not paths:
        raise InputError("checkpoints", "no checkpoint given; pass a path, a list, a folder or a glob")
    if method in ("single", "mc_dropout") and len(paths) != 1:
        raise InputError(paths[0], f"evaluator={method} takes one checkpoint, got {len(paths)}; "
                         f"use evaluator=ensemble{'_mc_dropout' if method == 'mc_dropout' else ''}")
    n_samples = int(cfg.evaluator.get("n_samples") or 0) if "mc_dropout" in method else 0
    if "mc_dropout" in method and n_samples < 2:
        raise InputError("evaluator.n_samples", f"MC dropout needs at least 2 passes, got {n_samples}")
    predictor = Predictor(paths, mc_samples=n_samples, tta=bool(cfg.get("tta", False)), seed=int(cfg.seed),
                          device=str(cfg.get("device", "cpu")))
    meta = predictor.models[0].meta["data"]
    dm = build_eval_datamodule(cfg, meta)
    split = str(cfg.split)
    loader = dm.split_dataloader(split)
    if len(loader.dataset) == 0:
        raise InputError("split", f"split {split!r} holds no maps")
    post = predictor.predict_batches(loader, target_priors=dm.priors)
    extra = exact_posterior_datasets(cfg, dm, split, post)
    out = Path(cfg.out_dir) / "predictions.h5"
    write_posterior(out, post, predictor, method=method, split=split, n_members=len(paths),
                    n_samples=n_samples, extra=extra, checkpoints=[str(p) for p in paths], suite=dm.suite,
                    tta=predictor.tta)
    log.info("wrote %s (%d maps, %s)", out, len(post.mean), method)
    print(f"predictions: {out}")
    return out


def exact_posterior_datasets(cfg: DictConfig, dm: CMDDataModule, split: str, post: Posterior) -> dict:
    """``exact_mean`` / ``exact_std`` for maps of the ``grf`` simulator (the physical limit)."""
    want = str(cfg.get("exact_posterior", "auto")).lower()
    sim_cfg = None
    if hasattr(dm.source, "manifest"):
        sim_cfg = (dm.source.manifest.extra or {}).get("simulator")
    is_grf = isinstance(sim_cfg, dict) and sim_cfg.get("name") == "grf"
    if want in ("false", "none", "0") or (want == "auto" and not is_grf):
        return {}
    if not is_grf:
        raise InputError(dm.source.root, "exact_posterior=true needs maps from the grf simulator")
    if list(post.param_names) != ["Omega_m", "sigma_8"]:
        log.warning("exact posterior is computed for [Omega_m, sigma_8] only; skipped for %s", post.param_names)
        return {}
    from cosmoinfer.simulators.exact import exact_posterior
    from cosmoinfer.simulators.grf import GRFSimulator

    sim = GRFSimulator(**{k: v for k, v in sim_cfg.items() if k in ("grid", "box_size", "slab_thickness",
                                                                      "noise_std")})
    idx = dm.datasets[split].indices
    res = {"mean": [], "std": []}
    for i0 in range(0, len(idx), 512):
        block = idx[i0:i0 + 512]
        maps = np.stack([dm.source.read_one(int(i))[0] for i in block])  # only these maps, ``(n, H, W)``
        r = exact_posterior(maps, sim, dm.priors, n_grid=int(cfg.get("exact_grid", 96)))
        res["mean"].append(r["mean"])
        res["std"].append(r["std"])
    return {"exact_mean": np.concatenate(res["mean"]), "exact_std": np.concatenate(res["std"])}


def write_posterior(path: Path, post: Posterior, predictor: Predictor, method: str, split: str,
                    n_members: int, n_samples: int, extra: dict | None = None, **attrs) -> Path:
    from cosmoinfer.calibration.predictions import write_predictions

    return write_predictions(
        path, truth=post.truth, mean=post.mean, std=post.std, std_aleatoric=post.std_aleatoric,
        std_epistemic=post.std_epistemic, sim_id=post.sim_id, param_names=post.param_names, method=method,
        split=split, member_mean=post.member_mean, member_std=post.member_std, cov=post.cov,
        n_members=n_members, n_samples=n_samples or None, priors=predictor.priors, extra_datasets=extra or None,
        extra_attrs=attrs, task=post.task)
