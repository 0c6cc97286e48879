"""``predictions.h5``: the file evaluate writes and report reads (DESIGN.md contract).

Layout (all values in physical parameter units, never the normalised ones):

datasets
    ``truth (N, P)``, ``mean (N, P)``, ``std (N, P)``, ``std_aleatoric (N, P)``,
    ``std_epistemic (N, P)``, ``sim_id (N,)``; optional ``member_mean (M, N, P)`` and
    ``member_std (M, N, P)`` (ensemble members or MC-dropout passes), ``cov (N, P, P)`` (full-
    covariance heads; its diagonal equals ``std²``), and extras such as ``mixture_weights (M,)`` /
    ``(M, N)`` or the exact GRF posterior (``cosmoinfer.uncertainty.evaluate.exact_posterior_datasets``):
    ``exact_mean``, ``exact_std``, ``exact_pit (N, P)``, ``exact_cov (N, P, P)``, ``exact_log_prob``,
    ``exact_hpd (N,)`` and the group ``exact_grid`` (``index (m,)``, ``omega_m (m, G)``, ``sigma_8
    (m, G)``, ``log_density (m, G, G)``; read into ``Predictions.extra["exact_grid"]`` as a dict).
group ``predictive`` (format version 2): the whole predictive distribution, faithfully
    ``kind = "gaussian_mixture"``: ``weights (N, K)``, ``loc (N, K, P)`` and ``scale_tril
    (N, K, P, P)`` in the network's unit coordinates, with the attribute ``bijection`` (JSON:
    per-parameter ``shift``, ``scale``, ``log`` and the prior box) that maps them to physical
    units (:class:`~cosmoinfer.posterior.mixture.MixturePredictive`);
    ``kind = "samples"``: ``samples (N, S, P)`` physical draws, ``sample_log_prob (N, S)`` and
    ``truth_log_prob (N,)`` (:class:`~cosmoinfer.posterior.samples.SamplePredictive`).
    Files without the group (format version 1) still load: their predictive is rebuilt from
    ``member_mean``/``member_std``, ``cov`` or ``mean``/``std`` as Gaussians in physical units.
attributes
    ``format_version`` (2), ``param_names`` (list of str), ``method`` (e.g. ``single``,
    ``ensemble``, ``mc_dropout``), ``split`` (e.g. ``test``), ``n_members`` or ``n_samples``;
    optional ``priors`` (JSON list of :meth:`Prior.to_dict`), ``task`` (``regression`` default,
    or ``classification``), ``run`` (JSON object of :func:`cosmoinfer.provenance.run_details`:
    what was trained, on what, for how long; read into ``Predictions.run``, ``None`` when absent).

Classification predictions (a Bernoulli head) have ``task="classification"``, ``truth (N, 1)``
in {0, 1}, ``mean (N, 1)`` the predicted probability and ``std = sqrt(p (1 − p))``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from cosmoinfer.data.priors import Prior
from cosmoinfer.errors import InputError, atomic_path
from cosmoinfer.posterior.bijection import Bijection
from cosmoinfer.posterior.mixture import MixturePredictive
from cosmoinfer.posterior.samples import SamplePredictive

#: Version of the layout written here (1: summaries only; 2: adds the ``predictive`` group).
FORMAT_VERSION = 2

REQUIRED = ("truth", "mean", "std", "std_aleatoric", "std_epistemic", "sim_id")
OPTIONAL = ("member_mean", "member_std", "cov")
#: Extra datasets with shape (N, P) that the report knows how to use.
EXTRA_NP = ("exact_mean", "exact_std", "exact_pit")
#: Extra datasets of the exact posterior (grf maps) with shape (N,) and (N, P, P); ``exact_grid`` is a group.
EXTRA_N = ("exact_log_prob", "exact_hpd")
EXTRA_NPP = ("exact_cov",)


@dataclass
class Predictions:
    """Contents of one ``predictions.h5``: arrays ``(N, P)`` unless stated, in physical units."""

    truth: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    std_aleatoric: np.ndarray
    std_epistemic: np.ndarray
    sim_id: np.ndarray  # (N,)
    param_names: list[str]
    method: str = "unknown"
    split: str = "unknown"
    task: str = "regression"
    member_mean: np.ndarray | None = None  # (M, N, P)
    member_std: np.ndarray | None = None  # (M, N, P)
    cov: np.ndarray | None = None  # (N, P, P)
    n_members: int | None = None
    n_samples: int | None = None
    priors: list[Prior] | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    #: Consistency notes found while reading (shown in the report, never fatal).
    warnings: list[str] = field(default_factory=list)
    #: What was trained, on what, and what was evaluated (the ``run`` attribute; None in older files).
    run: dict[str, Any] | None = None
    #: The whole predictive distribution (None only for classification).
    predictive: MixturePredictive | SamplePredictive | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if self.predictive is None and self.task == "regression":
            # built from the summaries (format 1): Gaussians in physical units
            self.predictive = legacy_predictive(self)

    @property
    def n(self) -> int:
        return int(self.truth.shape[0])

    @property
    def p(self) -> int:
        return int(self.truth.shape[1])

    @property
    def has_members(self) -> bool:
        return self.member_mean is not None and self.member_std is not None

    @property
    def mixture_weights(self) -> np.ndarray | None:
        return self.extra.get("mixture_weights")

    def subset(self, idx: np.ndarray) -> "Predictions":
        """The predictions of items ``idx`` (an index or boolean array over N)."""
        idx = np.asarray(idx)
        extra = {}
        for k, v in self.extra.items():
            if isinstance(v, dict):  # a group of per-item rows named by ``index`` (exact_grid)
                extra[k] = _subset_group(v, idx, self.n)
            elif k == "mixture_weights":
                extra[k] = v[:, idx] if v.ndim == 2 else v
            elif v.ndim >= 1 and v.shape[0] == self.n:
                extra[k] = v[idx]
            else:
                extra[k] = v
        return replace(
            self,
            truth=self.truth[idx], mean=self.mean[idx], std=self.std[idx],
            std_aleatoric=self.std_aleatoric[idx], std_epistemic=self.std_epistemic[idx],
            sim_id=self.sim_id[idx],
            member_mean=None if self.member_mean is None else self.member_mean[:, idx],
            member_std=None if self.member_std is None else self.member_std[:, idx],
            cov=None if self.cov is None else self.cov[idx],
            extra=extra, warnings=list(self.warnings),
            predictive=None if self.predictive is None else self.predictive.subset(idx),
        )

    def scaled(self, s: np.ndarray) -> "Predictions":
        """Predictions whose predictive is stretched by ``s (P,)`` about its mean in unit coordinates.

        See :meth:`MixturePredictive.scaled` (variance scaling for a single Gaussian). Summaries
        (``mean``, ``std``, ``cov``) are recomputed from the new predictive; member arrays are
        dropped.
        """
        s = np.asarray(s, dtype=np.float64)
        new = self.predictive.scaled(s)
        mean, cov = new.moments()
        std = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
        ratio = std / self.std
        return replace(
            self, mean=mean, std=std, std_aleatoric=self.std_aleatoric * ratio,
            std_epistemic=self.std_epistemic * ratio, member_mean=None, member_std=None,
            cov=None if self.cov is None else cov,
            extra=dict(self.extra), warnings=list(self.warnings), predictive=new,
        )


# --------------------------------------------------------------------------- writing


def _as_float(name: str, a, ndim: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {a.shape}")
    return a


def write_predictions(
    path: str | os.PathLike,
    *,
    truth: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    std_aleatoric: np.ndarray,
    std_epistemic: np.ndarray,
    sim_id: np.ndarray,
    param_names: Sequence[str],
    method: str,
    split: str,
    member_mean: np.ndarray | None = None,
    member_std: np.ndarray | None = None,
    cov: np.ndarray | None = None,
    n_members: int | None = None,
    n_samples: int | None = None,
    priors: Sequence[Prior] | None = None,
    extra_datasets: Mapping[str, np.ndarray] | None = None,
    extra_attrs: Mapping[str, Any] | None = None,
    task: str = "regression",
    predictive: MixturePredictive | SamplePredictive | None = None,
) -> Path:
    """Write ``predictions.h5`` atomically (temp file next to ``path``, renamed on success).

    Args:
        truth, mean, std, std_aleatoric, std_epistemic: ``(N, P)`` in physical units.
        sim_id: ``(N,)`` integer simulation index of each item.
        param_names: ``P`` names, in column order.
        method, split: stored as attributes (``single | ensemble | mc_dropout | ...``; ``test``...).
        member_mean, member_std: optional ``(M, N, P)`` per-member Gaussians.
        cov: optional ``(N, P, P)`` predictive covariance (full-covariance heads).
        n_members, n_samples: ensemble size or number of MC-dropout passes (attribute).
        priors: optional priors, stored as the JSON attribute ``priors``.
        extra_datasets: further datasets, e.g. ``exact_mean``/``exact_std (N, P)``, ``mixture_weights``.
        extra_attrs: further attributes; non-scalar values other than lists of str/numbers are
            stored as JSON strings.
        task: ``regression`` or ``classification``.
        predictive: the whole predictive distribution, stored in the ``predictive`` group (its
            items must be the ``N`` rows of ``truth``).

    Returns:
        ``Path(path)``. Raises ``ValueError`` on inconsistent shapes (a caller bug).
    """
    truth = _as_float("truth", truth, 2)
    n, p = truth.shape
    arrays = {"truth": truth}
    for name, a in (("mean", mean), ("std", std), ("std_aleatoric", std_aleatoric),
                    ("std_epistemic", std_epistemic)):
        arrays[name] = _as_float(name, a, 2)
        if arrays[name].shape != (n, p):
            raise ValueError(f"{name}: shape {arrays[name].shape}, expected {(n, p)} like truth")
    sid = np.asarray(sim_id)
    if sid.shape != (n,):
        raise ValueError(f"sim_id: shape {sid.shape}, expected {(n,)}")
    arrays["sim_id"] = sid.astype(np.int64)
    if len(param_names) != p:
        raise ValueError(f"param_names has {len(param_names)} names for P={p} columns")
    if (member_mean is None) != (member_std is None):
        raise ValueError("member_mean and member_std go together")
    if member_mean is not None:
        arrays["member_mean"] = _as_float("member_mean", member_mean, 3)
        arrays["member_std"] = _as_float("member_std", member_std, 3)
        for k in ("member_mean", "member_std"):
            if arrays[k].shape[1:] != (n, p):
                raise ValueError(f"{k}: shape {arrays[k].shape}, expected (M, {n}, {p})")
    if cov is not None:
        arrays["cov"] = _as_float("cov", cov, 3)
        if arrays["cov"].shape != (n, p, p):
            raise ValueError(f"cov: shape {arrays['cov'].shape}, expected {(n, p, p)}")
    for k, v in (extra_datasets or {}).items():
        if k in arrays or k in OPTIONAL:
            raise ValueError(f"extra dataset {k!r} clashes with a standard dataset")
        arrays[k] = {kk: np.asarray(vv) for kk, vv in v.items()} if isinstance(v, Mapping) else np.asarray(v)
    if predictive is not None and (predictive.n != n or predictive.p != p):
        raise ValueError(f"predictive: {predictive.n} items x {predictive.p} parameters, expected {(n, p)}")

    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for k, v in arrays.items():
                if isinstance(v, dict):  # a dict-valued extra (exact_grid) is a group of datasets
                    g = f.create_group(k)
                    for kk, vv in v.items():
                        g.create_dataset(kk, data=vv, compression="gzip", compression_opts=1)
                else:
                    f.create_dataset(k, data=v)
            f.attrs["format_version"] = FORMAT_VERSION
            if predictive is not None:
                _write_predictive(f.create_group("predictive"), predictive)
            f.attrs["param_names"] = np.array([str(s) for s in param_names], dtype=h5py.string_dtype())
            f.attrs["method"] = str(method)
            f.attrs["split"] = str(split)
            f.attrs["task"] = str(task)
            if n_members is not None:
                f.attrs["n_members"] = int(n_members)
            if n_samples is not None:
                f.attrs["n_samples"] = int(n_samples)
            if priors is not None:
                f.attrs["priors"] = json.dumps([pr.to_dict() for pr in priors])
            for k, v in (extra_attrs or {}).items():
                f.attrs[k] = _attr_value(v)
    return path


def _write_predictive(g: h5py.Group, pred) -> None:
    g.attrs["kind"] = pred.kind
    g.attrs["bijection"] = json.dumps(pred.bijection.to_attrs())
    g.attrs["param_names"] = np.array(list(pred.param_names), dtype=h5py.string_dtype())
    if pred.kind == "gaussian_mixture":
        names = ("weights", "loc", "scale_tril")
    else:
        names = ("samples", "sample_log_prob", "truth_log_prob")
    for k in names:
        g.create_dataset(k, data=getattr(pred, k), compression="gzip", compression_opts=1, shuffle=True)


def _attr_value(v):
    if isinstance(v, (str, bool, int, float, np.integer, np.floating)):
        return v
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return np.array(list(v), dtype=h5py.string_dtype())
    if isinstance(v, (list, tuple, np.ndarray)) and np.asarray(v).dtype.kind in "biuf":
        return np.asarray(v)
    return json.dumps(v)


# --------------------------------------------------------------------------- reading


def _decode(v) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray) and v.dtype.kind in "OSU":
        return [x.decode() if isinstance(x, bytes) else str(x) for x in v.ravel()]
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Read and validate ``predictions.h5``.

    Every problem (missing file, not HDF5, missing dataset or attribute, inconsistent shapes,
    non-finite values, non-positive widths, bad priors JSON) raises
    ``InputError(path, "<dataset>: <what>")`` with a one-line message naming the dataset.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found (pass the predictions.h5 written by cosmoinfer-evaluate)")
    if path.is_dir() or not h5py.is_hdf5(path):
        raise InputError(path, "not an HDF5 file (expected predictions.h5 written by cosmoinfer-evaluate)")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _decode(f.attrs[k]) for k in f.attrs.keys()}
            data: dict[str, np.ndarray] = {}
            for k in f.keys():
                obj = f[k]
                if isinstance(obj, h5py.Group) and k != "predictive":  # e.g. exact_grid: a dict of arrays
                    data[k] = {kk: obj[kk][()] for kk in obj.keys() if isinstance(obj[kk], h5py.Dataset)}
                if not isinstance(obj, h5py.Dataset):
                    continue
                data[k] = obj[()]
            group = None
            if "predictive" in f:
                g = f["predictive"]
                if not isinstance(g, h5py.Group):
                    raise InputError(path, "'predictive' is not a group")
                group = {"attrs": {k: _decode(g.attrs[k]) for k in g.attrs.keys()},
                         "data": {k: g[k][()] for k in g.keys() if isinstance(g[k], h5py.Dataset)}}
    except OSError as err:
        raise InputError(path, f"cannot read HDF5 file: {err}") from None
    pred = _validate(path, data, attrs)
    if pred.task == "regression":
        pred.predictive = (_read_predictive(path, group, pred) if group is not None
                           else legacy_predictive(pred))
        pred.format_version = int(attrs.get("format_version", 1)) if group is not None else 1
    return pred


def legacy_predictive(pred: Predictions) -> MixturePredictive:
    """The predictive of a format-1 file: its Gaussians in physical units (identity bijection).

    ``member_mean``/``member_std`` (with ``mixture_weights``) give one diagonal component per
    member; otherwise ``cov`` one full-covariance component; otherwise ``mean``/``std``.
    """
    bij = Bijection.identity(pred.p, pred.priors)
    if pred.has_members:
        w = pred.mixture_weights
        m = pred.member_mean.shape[0]
        w = np.full((pred.n, m), 1.0 / m) if w is None else np.broadcast_to(
            (w if w.ndim == 2 else w[:, None]).T, (pred.n, m))
        return MixturePredictive.from_gaussians(np.swapaxes(pred.member_mean, 0, 1),
                                                np.swapaxes(pred.member_std, 0, 1) ** 2, bij,
                                                pred.param_names, weights=w)
    if pred.cov is not None:
        return MixturePredictive.from_gaussians(pred.mean[:, None], pred.cov[:, None], bij, pred.param_names)
    return MixturePredictive.from_gaussians(pred.mean[:, None], pred.std[:, None] ** 2, bij, pred.param_names)


def _read_predictive(path: Path, group: dict, pred: Predictions):
    """Validate the ``predictive`` group against the file's N items and P parameters."""
    attrs, data = group["attrs"], group["data"]
    n, p = pred.n, pred.p
    kind = attrs.get("kind")
    try:
        bij = Bijection.from_attrs(json.loads(attrs["bijection"]))
    except (KeyError, ValueError, TypeError) as err:
        raise InputError(path, f"predictive: attribute 'bijection' is missing or invalid ({err})") from None
    if bij.p != p or len(bij.shift) != p or len(bij.log) != p:
        raise InputError(path, f"predictive: attribute 'bijection' describes {bij.p} parameters, expected {p}")

    def arr(k: str, shape_ok, what: str) -> np.ndarray:
        if k not in data:
            raise InputError(path, f"missing dataset 'predictive/{k}'")
        a = data[k]
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
            raise InputError(path, f"dataset 'predictive/{k}' is not numeric")
        if not shape_ok(a.shape):
            raise InputError(path, f"dataset 'predictive/{k}' has shape {a.shape}; expected {what}")
        return a.astype(np.float64)

    if kind == "gaussian_mixture":
        w = arr("weights", lambda s: len(s) == 2 and s[0] == n and s[1] >= 1, f"({n}, K)")
        k = w.shape[1]
        loc = arr("loc", lambda s: s == (n, k, p), f"({n}, {k}, {p})")
        tril = arr("scale_tril", lambda s: s == (n, k, p, p), f"({n}, {k}, {p}, {p})")
        for name, a in (("weights", w), ("loc", loc), ("scale_tril", tril)):
            if not np.all(np.isfinite(a)):
                raise InputError(path, f"dataset 'predictive/{name}' has non-finite values (NaN or inf)")
        if np.any(w < 0) or np.any(w.sum(axis=1) <= 0):
            raise InputError(path, "dataset 'predictive/weights' must be non-negative with a positive sum per item")
        if np.any(np.diagonal(tril, axis1=-2, axis2=-1) <= 0):
            raise InputError(path, "dataset 'predictive/scale_tril' has a diagonal entry <= 0 "
                                   "(Cholesky factors need a positive diagonal)")
        return MixturePredictive(w, loc, tril, bij, list(pred.param_names))
    if kind == "samples":
        smp = arr("samples", lambda s: len(s) == 3 and s[0] == n and s[1] >= 2 and s[2] == p, f"({n}, S, {p})")
        slp = arr("sample_log_prob", lambda s: s == smp.shape[:2], f"{smp.shape[:2]}")
        tlp = arr("truth_log_prob", lambda s: s == (n,), f"({n},)")
        if not (np.all(np.isfinite(smp)) and np.all(np.isfinite(slp))):
            raise InputError(path, "dataset 'predictive/samples' or 'predictive/sample_log_prob' has non-finite values")
        if np.any(np.isnan(tlp)) or np.any(tlp == np.inf):
            raise InputError(path, "dataset 'predictive/truth_log_prob' has NaN or +inf values")
        return SamplePredictive(smp, slp, tlp, bij, list(pred.param_names))
    raise InputError(path, f"predictive: attribute 'kind' is {kind!r}; expected 'gaussian_mixture' or 'samples'")


def _validate(path: Path, data: dict[str, np.ndarray], attrs: dict[str, Any]) -> Predictions:
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


def _subset_group(g: dict, idx, n: int) -> dict:
    """The rows of a group whose ``index`` is among the items ``idx`` (index or boolean array over ``n``), re-indexed."""
    if "index" not in g:
        return g
    sel = np.arange(n)[np.asarray(idx)]
    new = np.full(n, -1)
    new[sel] = np.arange(sel.size)
    keep = new[g["index"]] >= 0
    out = {k: np.asarray(v)[keep] for k, v in g.items()}
    out["index"] = new[g["index"][keep]]
    return out
