"""The benchmark's results: the figures of each part from its stages' outputs, and the JSON.

Each ``summarise_*`` reads the ``predictions.h5`` of its part's evaluate stages under ``--out``
and returns ``{experiment: {parameter: {metric: value}}}`` (the JSON contract), adding what it
learnt about the runs (training times, test-set sizes, the cross-suite verdicts) to ``info``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from cosmoinfer.errors import atomic_write_text
from cosmoinfer.stages import RECORD
from pipelines.physical_limit.figures import (
    _merge,
    _num,
    _per_param,
    _same_maps,
    bootstrap_gain,
    calibration_figures,
    exact_figures,
    exact_reference,
    interval_figures,
    joint_figures,
    kl_gain,
    predictive_coverage_errors,
)
from pipelines.physical_limit.tasks import CROSS, HEADS_ORDER, MULTI_FIELDS

#: Metric names of the grf experiments (the JSON contract).
GRF_METRICS = ("efficiency", "std_ratio_median", "mean_shift", "coverage_error",
               "coverage_error_recalibrated", "rmse", "train_minutes", "baseline_rmse")
#: Joint (whole-predictive) figures of the grf experiments, under the pseudo-parameter ``joint``.
GRF_JOINT = ("expected_kl", "expected_kl_lo", "expected_kl_hi", "hpd_coverage_error", "nll")


def _read(path: Path):
    from cosmoinfer.calibration import read_predictions

    return read_predictions(path) if path.is_file() else None


def done_seconds(folder: Path) -> float | None:
    """Wall seconds of the stage that made ``folder`` (its ``.stage.json``); None unless it finished."""
    try:
        rec = json.loads((Path(folder) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if rec.get("status") != "done":
        return None
    sec = rec.get("seconds")
    return float(sec) if isinstance(sec, (int, float)) else float("nan")


def train_info(folder: Path) -> dict:
    """Wall minutes of a training run (its stage record) and the epochs it completed (metrics.csv)."""
    sec = done_seconds(folder)
    epochs = None
    mcsv = folder / "metrics.csv"
    if mcsv.is_file():
        with open(mcsv) as fh:
            ep = [int(float(r["epoch"])) for r in csv.DictReader(fh) if r.get("epoch") and r.get("val/loss")]
        epochs = max(ep) + 1 if ep else 0
    return {"minutes": None if sec is None else sec / 60, "epochs": epochs}


def _minutes(m) -> float | None:
    return _num(m if m is not None else np.nan)


def _pair(root: Path, label: str):
    """``(test, fit)`` predictions of one model: the recalibrations are fitted on its predictions of the
    calibration set (``calib/``) where they exist, else on the val split."""
    calib = _read(root / label / "calib" / "predictions.h5")
    return (_read(root / label / "test" / "predictions.h5"),
            calib if calib is not None else _read(root / label / "val" / "predictions.h5"))


def summarise_grf(out: Path, info: dict) -> dict:
    root = out / "grf"
    res = {}
    ps_test, ps_val = _pair(root / "predictions", "ps")
    ps_train = train_info(root / "ps" / "members" / "0")
    base = {}
    if ps_test is not None and "exact_mean" in ps_test.extra:
        # the exact posterior's own figures are given once, with the CNN's
        figs = {**exact_figures(ps_test, ps_val, reference={}),
                **calibration_figures(ps_test, ps_val, ci=True)}
        base = _per_param(ps_test.param_names, figs, "baseline_")
        for nm in base:
            base[nm]["baseline_train_minutes"] = _num(ps_train["minutes"] or np.nan)
        base["joint"] = joint_figures(ps_test, "baseline_")
    members = (sorted((root / "cnn" / "members").glob("*"), key=lambda p: int(p.name))
               if (root / "cnn").is_dir() else [])
    trains = [train_info(m) for m in members]
    info["grf"] = {"members": [{"member": m.name, **t} for m, t in zip(members, trains)],
                   "baseline": ps_train}
    first = trains[0]["minutes"] if trains else None
    total = sum(t["minutes"] or 0 for t in trains) if trains else None
    ref = None  # (test, val, exact_reference): the CNN entries are evaluated on the same maps
    for label, key, minutes in (("cnn_single", "grf_fisher", first),
                                ("cnn_single_no_tta", "grf_fisher_no_tta", first),
                                ("cnn_ensemble", "grf_fisher_ensemble", total)):
        test, val = _pair(root / "predictions", label)
        if test is None or "exact_mean" not in test.extra:
            continue
        if ref is None or not (_same_maps(test, ref[0]) and _same_maps(val, ref[1])):
            ref = (test, val, exact_reference(test, val, ci=True))
        figs = {**exact_figures(test, val, reference=ref[2]), **calibration_figures(test, val, ci=True)}
        d = _per_param(test.param_names, figs)
        for nm in d:
            d[nm]["train_minutes"] = _minutes(minutes)
        d["joint"] = joint_figures(test, exact=True)
        res[key] = _merge(d, base)
        info.setdefault("n_test", {})[key] = test.n
        fit_set = None if val is None else "calibration" if Path(val.path).parent.name == "calib" else "val"
        info.setdefault("recalibration_fit", {})[key] = None if val is None else f"{val.n} {fit_set} maps"
    # exploratory variants (trained by hand into grf/explore/<name>, evaluated into
    # grf/explore_predictions/<name>/{val,test}): reported as grf_fisher_explore_<name>
    explore = sorted((root / "explore").glob("*")) if (root / "explore").is_dir() else []
    for ex in explore:
        test, val = _pair(root / "explore_predictions", ex.name)
        if test is None or "exact_mean" not in test.extra:
            continue
        t = train_info(ex)
        d = _per_param(test.param_names, {**exact_figures(test, val), **calibration_figures(test, val)})
        for nm in d:
            d[nm]["train_minutes"] = _minutes(t["minutes"])
        d["joint"] = joint_figures(test, exact=True)
        res[f"grf_fisher_explore_{ex.name}"] = d
        info["grf"].setdefault("explore", {})[ex.name] = t
    return res


#: Per-parameter metric names of the heads part (the JSON contract), besides ``joint``'s GRF_JOINT.
HEADS_METRICS = ("efficiency", "std_ratio_median", "mean_shift", "coverage_error", "rmse", "train_minutes")


def transfer_source(folder: Path) -> str | None:
    """The name of the training folder whose backbone ``folder``'s best checkpoint started from, if any."""
    ckpt = folder / "checkpoints" / "best.ckpt"
    if not ckpt.is_file():
        return None
    import torch

    src = (torch.load(ckpt, map_location="cpu", weights_only=True)["cosmoinfer"].get("transfer") or {})
    path = src.get("checkpoint")
    return Path(path).parent.parent.name if path else None


def summarise_heads(out: Path, info: dict) -> dict:
    """``grf_heads_<label>``: each head's predictive against the exact posterior of the same test maps.

    Per parameter: ``efficiency``, ``std_ratio_median``, ``mean_shift`` (of the predictive's moments,
    :mod:`cosmoinfer.calibration.exact`), ``coverage_error`` (marginal, of the whole predictive, before
    any recalibration: :func:`predictive_coverage_errors`), ``rmse``, ``train_minutes`` (wall minutes
    of training: the sum over members for an ensemble, the source's training included for a head on a
    transferred backbone; sbi's own record for the sbi peers); under
    ``joint``: ``expected_kl`` with its simulation-bootstrap interval, ``hpd_coverage_error``, ``nll``
    and the exact posterior's own ``exact_hpd_coverage_error`` / ``exact_nll``; under ``run``: the ``date``
    of the run that scored it and the ``epochs`` its network trained (the most of an ensemble's members).
    """
    from cosmoinfer.calibration.metrics import compute_metrics, rmse

    root = out / "heads"
    pr, md = root / "predictions", root / "models"
    res, trains, tests = {}, {}, {}
    for m in sorted(md.glob("*")) if md.is_dir() else []:
        trains[m.name] = train_info(m)
    labels = sorted((p.name for p in pr.glob("*")), key=lambda k: (HEADS_ORDER.index(k) if k in HEADS_ORDER
                                                                  else len(HEADS_ORDER), k)) if pr.is_dir() else []
    for label in labels:
        test = _read(pr / label / "predictions.h5")
        if test is None or "exact_mean" not in test.extra:
            continue
        tests[label] = test
        members = ensemble_members(label, trains) if label.endswith("_ensemble") else [k for k in trains if k == label]
        if label.endswith("_ensemble"):
            minutes = sum(trains[k]["minutes"] or 0 for k in members) if members else None
        elif label.startswith("sbi_"):
            minutes = _sbi_minutes(pr / label)
        else:  # a head trained on another head's backbone (transfer.checkpoint) counts both trainings
            minutes = (trains.get(label) or {}).get("minutes")
            src = transfer_source(md / label)
            if minutes is not None and src is not None and src in trains:
                minutes += trains[src]["minutes"] or 0
        metrics = compute_metrics(test, rng=np.random.default_rng(0), n_posterior_samples=200, n_bootstrap=200)
        figs = {**exact_figures(test, reference={}), "coverage_error": predictive_coverage_errors(test, metrics),
                "rmse": rmse(test.truth, test.mean)}
        d = _per_param(test.param_names, figs)
        for nm in d:
            d[nm]["train_minutes"] = _minutes(minutes)
        d["joint"] = joint_figures(test, exact=True, metrics=metrics)
        member_epochs = [trains[k]["epochs"] for k in members]
        d["run"] = {"date": info.get("date"), "epochs": max(member_epochs) if member_epochs and None not in
                    member_epochs else None}
        res[f"grf_heads_{label}"] = d
        info.setdefault("heads", {}).setdefault("n_test", {})[label] = test.n
        info["heads"].setdefault("kind", {})[label] = test.predictive.kind
        if "grf_heads_oracle_gaussian" not in res and "exact_cov" in test.extra:
            res["grf_heads_oracle_gaussian"] = {"joint": oracle_gaussian_kl(test)}
    # each head against sbi's NPE on the power spectrum, scored in the same run: the paired KL difference
    ref = tests.get("sbi_ps")
    for label, test in tests.items():
        gain = kl_gain(test, ref) if ref is not None and label != "sbi_ps" else None
        if gain is not None:
            res[f"grf_heads_{label}"]["joint"]["kl_gain_over_sbi_ps"] = gain
    if trains:
        info.setdefault("heads", {})["train"] = trains
    return res


def ensemble_members(label: str, trains) -> list[str]:
    """The model folders of the ensemble ``<head>_ensemble``: ``<head>``, ``<head>_1``, ``<head>_2`` ...

    (for ``flow_ensemble`` not ``flow_on_diagonal`` nor ``flow_views``: a member's suffix is a number).
    """
    head = label.removesuffix("_ensemble")
    return [k for k in trains if k == head or k.startswith(head + "_") and k[len(head) + 1:].isdigit()]


def oracle_gaussian_kl(test) -> dict:
    """Expected KL of the oracle that knows each map's exact posterior mean and covariance, as one Gaussian.

    ``log q`` = the bivariate normal density ``N(theta_true; exact_mean, exact_cov)`` (physical units,
    not cut to the prior box); scored by :func:`cosmoinfer.calibration.exact.expected_kl`. The best
    any single-Gaussian head in these coordinates could do with perfect moments.
    """
    from cosmoinfer.calibration.exact import expected_kl

    mu, cov = np.asarray(test.extra["exact_mean"]), np.asarray(test.extra["exact_cov"])
    r = np.asarray(test.truth) - mu
    maha = np.einsum("ni,nij,nj->n", r, np.linalg.inv(cov), r)
    log_q = -0.5 * maha - 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]
    kl = expected_kl(test.extra["exact_log_prob"], log_q, test.sim_id, np.random.default_rng(0))
    return {"expected_kl": _num(kl["value"]), "expected_kl_lo": _num(kl["lo"]), "expected_kl_hi": _num(kl["hi"])}


def _sbi_minutes(folder: Path) -> float | None:
    """Training minutes the sbi peer recorded (``train_info.json``: ``train_minutes``)."""
    try:
        return float(json.loads((folder / "train_info.json").read_text())["train_minutes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cnn_vs_ps(cnn, ps, cnn_train, ps_train) -> dict:
    (ct, cv), (pt, pv) = cnn, ps
    out = {}
    # coverage_error (and its interval): the whole predictive's, from its PIT (interval_figures), in
    # place of calibration_figures' Gaussian-interval one; the recalibrated figures stay Gaussian
    if ct is not None:
        out = _per_param(ct.param_names, {**calibration_figures(ct, cv), **interval_figures(ct)})
        for nm in out:
            out[nm]["train_minutes"] = _num(cnn_train["minutes"] or np.nan)
    if pt is not None:
        out = _merge(out, _per_param(pt.param_names, {**calibration_figures(pt, pv), **interval_figures(pt)},
                                     "baseline_"))
        for nm in out:
            out[nm]["baseline_train_minutes"] = _num(ps_train["minutes"] or np.nan)
    if ct is not None:
        j = joint_figures(ct)
        out["joint"] = {k: j[k] for k in ("hpd_coverage_error", "nll")}
    for nm, d in out.items():
        if nm == "joint":
            continue
        if d.get("rmse") and d.get("baseline_rmse"):
            d["rmse_gain"] = _num(1 - d["rmse"] / d["baseline_rmse"])
    if ct is not None and pt is not None and np.array_equal(ct.sim_id, pt.sim_id) \
            and np.allclose(ct.truth, pt.truth):
        lo, hi = bootstrap_gain(ct.truth, ct.mean, pt.mean, ct.sim_id)
        for j, nm in enumerate(ct.param_names):
            out[nm]["rmse_gain_lo"], out[nm]["rmse_gain_hi"] = _num(lo[j]), _num(hi[j])
    return out


def _with_head(models: Path, name: str) -> dict:
    """``train_info`` of a camels network, its preset's second-stage head's minutes added where it has one."""
    base, head = train_info(models / name), models / f"{name}_head"
    if head.is_dir():
        extra = train_info(head)["minutes"]
        base["minutes"] = None if base["minutes"] is None or extra is None else base["minutes"] + extra
    return base


def summarise_camels(out: Path, info: dict) -> dict:
    root = out / "camels"
    res = {}
    pr, md = root / "predictions", root / "models"
    for exp, stem in (("camels_like_mtot", "mtot"), ("camels_like_multifield", "multifield")):
        d = _cnn_vs_ps(_pair(pr, f"{stem}_cnn"), _pair(pr, f"{stem}_ps"), _with_head(md, f"{stem}_cnn"),
                       train_info(md / f"{stem}_ps"))
        if d:
            res[exp] = d
    for f in MULTI_FIELDS:
        test, val = _pair(pr, f"single_{f}_cnn")
        if test is not None:
            d = _per_param(test.param_names, {**calibration_figures(test, val), **interval_figures(test)})
            for nm in d:
                d[nm]["train_minutes"] = _num(train_info(md / f"single_{f}_cnn")["minutes"] or np.nan)
            res[f"camels_like_single_{f}"] = d
    info["camels"] = {p.name: train_info(p) for p in sorted(md.glob("*"))} if md.is_dir() else {}
    return res


def summarise_cross(out: Path, info: dict) -> dict:
    """Foreign-suite figures, the in-suite ones for contrast, and the report's verdicts."""
    out_res, verdicts, n_foreign = {}, {}, None
    croot, pr = out / "cross", out / "camels" / "predictions"
    for suffix, (cnn, ps) in CROSS.items():
        res = {}
        for name, prefix in ((cnn, ""), (ps, "baseline_")):
            foreign = _read(croot / "predictions" / name / "predictions.h5") if name else None
            test, val = _pair(pr, name) if name else (None, None)
            if foreign is None or test is None:
                continue
            n_foreign = foreign.n
            d = _per_param(foreign.param_names, calibration_figures(foreign, val), prefix)
            d = _merge(d, _per_param(test.param_names, calibration_figures(test, val), prefix + "in_suite_"))
            for nm in d:
                ratio = d[nm][prefix + "rmse"] / d[nm][prefix + "in_suite_rmse"]
                d[nm][prefix + "rmse_degradation"] = _num(ratio)
            res = _merge(res, d)
            try:
                verdicts[name] = cross_report(croot / "report" / name, test, foreign, val)
            except Exception as err:  # the figures stand without the report
                verdicts[name] = {"error": str(err)}
        if res:
            out_res[f"cross_suite_SynthTNG_to_SynthSIMBA{suffix}"] = res
    if out_res:
        info["cross"] = {"verdicts": verdicts, "n_foreign": n_foreign}
    return out_res


def cross_report(folder: Path, test, foreign, val) -> dict:
    """cosmoinfer-report's verdicts for in-suite test and foreign-suite predictions (recalibrated on val)."""
    from cosmoinfer.calibration import build_report

    build_report([test.path, foreign.path], folder, val_predictions=[val.path, val.path] if val else None,
                 labels=["SynthTNG test (in-suite)", "SynthSIMBA all (foreign)"], n_bootstrap=20,
                 n_posterior_samples=200)
    doc = json.loads((folder / "metrics.json").read_text())
    blocks = doc.get("comparison", [doc])
    return {b["label"]: {nm: v for nm, v in b.get("verdicts", {}).items()} for b in blocks}


def summarise_sweep(out: Path, sc: dict, info: dict) -> dict:
    s = sc["sweep"]
    res = {}
    for v in s["values"]:
        tag = f"{s['knob']}_{v}"
        root = out / "sweep" / tag
        d = _cnn_vs_ps(_pair(root / "predictions", "cnn"), _pair(root / "predictions", "ps"),
                       train_info(root / "models" / "cnn"), train_info(root / "models" / "ps"))
        if d:
            res[f"sweep_{tag}"] = d
    return res


def _with_old_baseline(old, new):
    """``new``, plus ``old``'s ``baseline_*`` figures where ``new`` has none at all (see :func:`write_json`)."""
    def params(d):
        return {nm: v for nm, v in d.items() if isinstance(v, dict)} if isinstance(d, dict) else {}

    if not params(old) or any(k.startswith("baseline_") for v in params(new).values() for k in v):
        return new
    out = dict(new)
    for nm, v in params(new).items():
        base = {k: x for k, x in params(old).get(nm, {}).items() if k.startswith("baseline_")}
        out[nm] = {**v, **base}
    return out


def write_json(path: Path, results: dict) -> dict:
    """Merge ``results`` into the JSON at ``path`` (experiments of this run replace old ones).

    An experiment that pairs a network with its power-spectrum baseline (``baseline_*`` figures) and
    comes back without any baseline figure (only the network's stages ran) keeps the old entry's
    baseline figures, parameter by parameter.
    """
    old = json.loads(path.read_text()) if path.is_file() else {}
    for key, new in results.items():
        old[key] = _with_old_baseline(old.get(key), new)
    order = ("grf_fisher", "camels_like", "cross_suite", "sweep")

    def rank(kv):
        return next((i for i, p in enumerate(order) if kv[0].startswith(p)), len(order)), kv[0]

    old = dict(sorted(old.items(), key=rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(old, indent=2, sort_keys=False, allow_nan=False) + "\n")
    return old
