"""Checks of what was read from ``predictions.h5``: shapes, finiteness, widths, covariances, extras.

Every problem raises ``InputError(path, "<dataset>: <what>")`` with a one-line message naming the
dataset; soft inconsistencies become ``Predictions.warnings``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cosmoinfer.data.priors import Prior
from cosmoinfer.errors import InputError
from cosmoinfer.posterior.predictions_schema import (
    EXTRA_N,
    EXTRA_NP,
    EXTRA_NPP,
    OPTIONAL,
    REQUIRED,
    Predictions,
)

#: A predictive std beyond this many times the scale of the truths (their range or size) is refused.
MAX_WIDTH_FACTOR = 1e6


def validate(path: Path, data: dict[str, np.ndarray], attrs: dict[str, Any]) -> Predictions:
    """The :class:`Predictions` of a file's datasets ``data`` and attributes ``attrs`` (predictive not yet set)."""
    task = str(attrs.get("task", "regression"))
    if task not in ("regression", "classification"):
        raise InputError(path, f"attribute 'task' is {task!r}; expected 'regression' or 'classification'")
    clf = task == "classification"

    if "param_names" not in attrs:
        raise InputError(path, "missing attribute 'param_names' (list of parameter names)")
    names = attrs["param_names"]
    names = [names] if isinstance(names, str) else [str(x) for x in names]

    required = ("truth", "mean", "sim_id") if clf else REQUIRED
    for k in required:
        if k not in data:
            raise InputError(path, f"missing dataset '{k}'")

    def num(k: str, ndim: int) -> np.ndarray:
        a = data[k]
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
            raise InputError(path, f"dataset '{k}' is not numeric (dtype {getattr(a, 'dtype', type(a))})")
        if a.ndim != ndim:
            raise InputError(path, f"dataset '{k}' has shape {a.shape}; expected {ndim} dimensions")
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            bad = int(np.size(a) - np.isfinite(a).sum())
            raise InputError(path, f"dataset '{k}' has {bad} non-finite values (NaN or inf)")
        return a

    truth = num("truth", 2)
    n, p = truth.shape
    if n < 1 or p < 1:
        raise InputError(path, f"dataset 'truth' is empty (shape {truth.shape})")
    if p != len(names):
        raise InputError(path, f"attribute 'param_names' has {len(names)} names but 'truth' has {p} columns")

    def np_shaped(k: str) -> np.ndarray:
        a = num(k, 2)
        if a.shape != (n, p):
            raise InputError(path, f"dataset '{k}' has shape {a.shape}; expected {(n, p)} like 'truth'")
        return a

    mean = np_shaped("mean")
    if clf:
        if p != 1:
            raise InputError(path, f"dataset 'truth' has {p} columns; classification needs 1")
        if not np.all(np.isin(truth, (0.0, 1.0))):
            raise InputError(path, "dataset 'truth' must hold 0/1 labels for task=classification")
        if np.any((mean < 0) | (mean > 1)):
            raise InputError(path, "dataset 'mean' must hold probabilities in [0, 1] for task=classification")
        std = np_shaped("std") if "std" in data else np.sqrt(mean * (1 - mean))
        if np.any(std < 0):
            raise InputError(path, "dataset 'std' has negative values")
        alea = np_shaped("std_aleatoric") if "std_aleatoric" in data else std.copy()
        epi = np_shaped("std_epistemic") if "std_epistemic" in data else np.zeros_like(std)
    else:
        std = np_shaped("std")
        if np.any(std <= 0):
            raise InputError(path, f"dataset 'std' has {int((std <= 0).sum())} values <= 0; widths must be positive")
        # a width a million times the scale of the parameter is no posterior (a unit error, a broken head)
        scale = np.maximum(np.ptp(truth, axis=0), np.max(np.abs(truth), axis=0))
        huge = std > MAX_WIDTH_FACTOR * np.where(scale > 0, scale, 1.0)
        if np.any(huge):
            j = int(np.argwhere(huge)[0][1])
            raise InputError(path, f"dataset 'std' of {names[j]} reaches {float(std[:, j].max()):.3g}, more than "
                                   f"{MAX_WIDTH_FACTOR:.0e} times the scale of its truths ({float(scale[j]):.3g}): "
                                   "not a posterior width (physical units expected)")
        alea = np_shaped("std_aleatoric")
        epi = np_shaped("std_epistemic")
    for k, a in (("std_aleatoric", alea), ("std_epistemic", epi)):
        if np.any(a < 0):
            raise InputError(path, f"dataset '{k}' has negative values")

    sid = data["sim_id"]
    if not isinstance(sid, np.ndarray) or sid.shape != (n,) or sid.dtype.kind not in "biuf":
        raise InputError(path, f"dataset 'sim_id' has shape {getattr(sid, 'shape', None)}; expected ({n},) integers")

    warnings: list[str] = []
    member_mean = member_std = None
    if ("member_mean" in data) != ("member_std" in data):
        missing = "member_std" if "member_mean" in data else "member_mean"
        raise InputError(path, f"missing dataset '{missing}' (member_mean and member_std go together)")
    if "member_mean" in data:
        member_mean, member_std = num("member_mean", 3), num("member_std", 3)
        for k, a in (("member_mean", member_mean), ("member_std", member_std)):
            if a.shape[1:] != (n, p) or a.shape[0] < 1:
                raise InputError(path, f"dataset '{k}' has shape {a.shape}; expected (M, {n}, {p})")
        if member_mean.shape != member_std.shape:
            raise InputError(path, f"dataset 'member_std' has shape {member_std.shape}; 'member_mean' has {member_mean.shape}")
        if np.any(member_std <= 0):
            raise InputError(path, "dataset 'member_std' has values <= 0; widths must be positive")

    cov = None
    if "cov" in data:
        cov = num("cov", 3)
        if cov.shape != (n, p, p):
            raise InputError(path, f"dataset 'cov' has shape {cov.shape}; expected {(n, p, p)}")
        d = np.sqrt(np.abs(np.diagonal(cov, axis1=1, axis2=2)))
        if np.any(np.abs(cov - np.swapaxes(cov, 1, 2)) > 1e-4 * d[:, :, None] * d[:, None, :]):
            raise InputError(path, "dataset 'cov' is not symmetric")
        cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))  # remove float32 round-off asymmetry
        try:
            np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            raise InputError(path, "dataset 'cov' is not positive definite for every item") from None
        diag = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
        if not np.allclose(diag, std, rtol=1e-2, atol=0):
            raise InputError(path, "dataset 'cov' diagonal does not match 'std'² (both must be in physical units)")

    extra: dict[str, np.ndarray] = {}
    for k, a in data.items():
        if k in REQUIRED or k in OPTIONAL:
            continue
        if k in EXTRA_NP:
            a = np_shaped(k)
            if k == "exact_std" and np.any(a <= 0):
                raise InputError(path, "dataset 'exact_std' has values <= 0")
            if k == "exact_pit" and np.any((a < 0) | (a > 1)):
                raise InputError(path, "dataset 'exact_pit' has values outside [0, 1]")
        elif k in EXTRA_N or k in EXTRA_NPP:
            a = num(k, 1 if k in EXTRA_N else 3)
            if a.shape != ((n,) if k in EXTRA_N else (n, p, p)):
                raise InputError(path, f"dataset '{k}' has shape {a.shape}; expected {(n,) if k in EXTRA_N else (n, p, p)}")
            if k == "exact_hpd" and np.any((a < 0) | (a > 1)):
                raise InputError(path, "dataset 'exact_hpd' has values outside [0, 1]")
        elif k == "exact_grid":
            a = _check_exact_grid(path, a, n)
        elif k == "mixture_weights":
            a = np.asarray(a, dtype=np.float64)
            m = None if member_mean is None else member_mean.shape[0]
            if m is None or a.shape not in ((m,), (m, n)) or np.any(a < 0) or not np.all(np.isfinite(a)):
                raise InputError(path, f"dataset 'mixture_weights' has shape {a.shape}; expected (M,) or (M, N) "
                                       "non-negative weights alongside member_mean")
        extra[k] = a

    priors = None
    if "priors" in attrs:
        try:
            raw = json.loads(attrs["priors"]) if isinstance(attrs["priors"], str) else attrs["priors"]
            priors = [Prior.from_dict(d) for d in raw]
        except (ValueError, TypeError, KeyError) as err:
            raise InputError(path, f"attribute 'priors' is not a valid JSON list of priors ({err})") from None
        by_name = {pr.name: pr for pr in priors}
        if not all(nm in by_name for nm in names):
            raise InputError(path, f"attribute 'priors' lacks {[nm for nm in names if nm not in by_name]}")
        priors = [by_name[nm] for nm in names]

    if not clf:
        total = alea**2 + epi**2
        if not np.allclose(total, std**2, rtol=2e-2, atol=1e-12):
            warnings.append("std² differs from std_aleatoric² + std_epistemic² by more than 2% for some items")
        if member_mean is not None:
            from cosmoinfer.posterior.member_moments import mixture_moments

            mu_star, var_star, _, _ = mixture_moments(member_mean, member_std**2, extra.get("mixture_weights"))
            if not (np.all(np.abs(mu_star - mean) <= 1e-2 * std + 1e-6 * np.abs(mean))
                    and np.allclose(var_star, std**2, rtol=2e-2)):
                warnings.append("mean/std differ from the Gaussian-mixture moments of member_mean/member_std "
                                "(averaging member sigmas drops the epistemic variance)")

    def int_attr(k: str) -> int | None:
        if k not in attrs:
            return None
        try:
            return int(attrs[k])
        except (TypeError, ValueError):
            raise InputError(path, f"attribute '{k}' must be an integer, got {attrs[k]!r}") from None

    for k in ("method", "split"):
        if k not in attrs:
            warnings.append(f"attribute '{k}' missing; using 'unknown'")
    run = _run_attr(attrs.get("run"), warnings)
    return Predictions(
        truth=truth, mean=mean, std=std, std_aleatoric=alea, std_epistemic=epi,
        sim_id=sid.astype(np.int64), param_names=names,
        method=str(attrs.get("method", "unknown")), split=str(attrs.get("split", "unknown")), task=task,
        member_mean=member_mean, member_std=member_std, cov=cov,
        n_members=int_attr("n_members"), n_samples=int_attr("n_samples"), priors=priors,
        extra=extra, attrs=attrs, path=str(path), warnings=warnings, run=run,
    )


def _run_attr(raw, warnings: list[str]) -> dict | None:
    """The ``run`` attribute (JSON text) as a dict; None when absent, a warning when unreadable."""
    if raw is None:
        return None
    try:
        run = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        run = None
    if not isinstance(run, dict):
        warnings.append("attribute 'run' is not a JSON object; run details ignored")
        return None
    return run


def _check_exact_grid(path: Path, g, n: int) -> dict:
    """Validate the ``exact_grid`` group: ``index (m,)``, ``omega_m``/``sigma_8 (m, G)``, ``log_density (m, G, G)``."""
    if not isinstance(g, dict):
        raise InputError(path, "'exact_grid' must be a group (index, omega_m, sigma_8, log_density)")
    for k in ("index", "omega_m", "sigma_8", "log_density"):
        if k not in g or not isinstance(g[k], np.ndarray) or g[k].dtype.kind not in "biuf":
            raise InputError(path, f"group 'exact_grid' lacks a numeric dataset '{k}'")
    idx, om, s8, ld = g["index"], g["omega_m"], g["sigma_8"], g["log_density"]
    m = idx.shape[0] if idx.ndim == 1 else -1
    gx = om.shape[1] if om.ndim == 2 else -1
    gy = s8.shape[1] if s8.ndim == 2 else -1
    if m < 0 or om.shape != (m, gx) or s8.shape != (m, gy) or ld.shape != (m, gx, gy):
        raise InputError(path, f"group 'exact_grid' has shapes index {idx.shape}, omega_m {om.shape}, sigma_8 "
                               f"{s8.shape}, log_density {ld.shape}; expected (m,), (m, G), (m, G), (m, G, G)")
    if idx.dtype.kind not in "iu" or np.any((idx < 0) | (idx >= n)):
        raise InputError(path, f"dataset 'exact_grid/index' must hold item indices in [0, {n})")
    if not (np.all(np.isfinite(om)) and np.all(np.isfinite(s8))) or np.any(np.isnan(ld) | (ld == np.inf)):
        raise InputError(path, "group 'exact_grid' has NaN or infinite values")
    return {"index": idx.astype(np.int64), "omega_m": om.astype(np.float64), "sigma_8": s8.astype(np.float64),
            "log_density": ld.astype(np.float64)}
