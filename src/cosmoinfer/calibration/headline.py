"""The report's headline: what was trained, on what, which method to trust, one verdict per parameter.

:func:`headline` is a pure function of the content of ``metrics.json`` (as written by
:func:`cosmoinfer.calibration.report.build_report`); the HTML report's headline box and the
pipeline's terminal summary both print what it returns.

**Which method to trust** (regression). A method is *calibrated* when every parameter's verdict is
"well calibrated". Among the calibrated methods the headline picks the one with the lowest joint
NLL (``joint.nll``: the mean of −log q(θ_true | x) over the test maps, from the whole predictive;
a proper score, so it rewards posteriors that are both sharp and honest). When no method is
calibrated on every parameter it picks the lowest joint NLL of all, and says so. A method without
a finite joint NLL ranks last; ties go to the method listed first. Classification reports pick
the lowest log-loss, the proper score of a probability.

**When the test set is too small to decide.** The verdicts compare each coverage error with the
tolerance a calibrated predictor reaches on the same simulations. Intervals
``DETECT_WIDTH_FACTOR`` (1.5) times too narrow, or too wide, miss nominal coverage by
:func:`detectable_error` (about 0.19 over the levels 0.05, ..., 0.95). Where the tolerance is
larger than that, such intervals would pass as "well calibrated": calibration cannot be decided,
and the headline warns. For independent simulations the tolerance is about
``sqrt(ln(2/alpha) / (2 (G − 1)))`` (DKW bound with the small-sample factor), so the warning
appears below :func:`min_sims` simulations (about 60 at ``alpha = ALPHA_COVERAGE``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.special import ndtr, ndtri

from cosmoinfer.calibration.levels import ALPHA_COVERAGE, DEFAULT_LEVELS

#: The verdicts must tell calibrated intervals from ones this factor too narrow or too wide.
DETECT_WIDTH_FACTOR = 1.5

#: The rule, as printed in the report.
RULE = ("Trust the method with the lowest joint NLL among those well calibrated on every parameter "
        "(or among all methods, when none is).")


def detectable_error(levels: Sequence[float] = DEFAULT_LEVELS, factor: float = DETECT_WIDTH_FACTOR) -> float:
    """Coverage error of Gaussian intervals ``factor`` times too narrow or too wide (the smaller of the two).

    Central intervals at nominal ``level`` then hold ``2 Φ(z_level / factor) − 1`` (too narrow)
    or ``2 Φ(factor z_level) − 1`` (too wide) of the truths; the error is the max over ``levels``.
    """
    lv = np.asarray(levels, dtype=np.float64)
    z = ndtri(0.5 + lv / 2)
    narrow = np.max(np.abs(2 * ndtr(z / factor) - 1 - lv))
    wide = np.max(np.abs(2 * ndtr(z * factor) - 1 - lv))
    return float(min(narrow, wide))


def dkw_tolerance(n_sims: int, alpha: float = ALPHA_COVERAGE) -> float:
    """Coverage-error tolerance of a calibrated predictor on ``n_sims`` independent simulations.

    DKW bound ``sqrt(ln(2/alpha) / (2 G))`` times the small-sample factor ``sqrt(G / (G − 1))``.
    """
    g = max(int(n_sims), 2)
    return float(math.sqrt(math.log(2 / alpha) / (2 * (g - 1))))


def min_sims(levels: Sequence[float] = DEFAULT_LEVELS, alpha: float = ALPHA_COVERAGE,
             factor: float = DETECT_WIDTH_FACTOR) -> int:
    """Fewest simulations whose :func:`dkw_tolerance` is below :func:`detectable_error`."""
    e = detectable_error(levels, factor)
    return int(math.ceil(1 + math.log(2 / alpha) / (2 * e * e)))


# --------------------------------------------------------------------------- helpers


def _blocks(metrics: Mapping) -> list[Mapping]:
    return list(metrics.get("comparison") or [metrics])


def _label(b: Mapping) -> str:
    return str(b.get("label") or b.get("method") or "unknown")


def _finite(x) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return math.inf
    return x if math.isfinite(x) else math.inf


def _calibrated(b: Mapping) -> bool:
    v = b.get("verdicts") or {}
    return bool(v) and all(d.get("status") == "well calibrated" for d in v.values())


def _pick(blocks: list[Mapping]) -> tuple[Mapping, str]:
    """The block to trust and why (see the module docstring for the rule)."""
    if all(b.get("task") == "classification" for b in blocks):
        score = [_finite(next(iter(b["params"].values()), {}).get("log_loss")) for b in blocks]
        i = int(np.argmin(score))
        if len(blocks) == 1:
            return blocks[0], "the only method in this report"
        return blocks[i], f"lowest log-loss ({score[i]:.3g}) of {len(blocks)} methods"
    reg = [b for b in blocks if b.get("task") != "classification"]
    nll = [_finite((b.get("joint") or {}).get("nll")) for b in reg]
    ok = [i for i, b in enumerate(reg) if _calibrated(b)]
    pool = ok or list(range(len(reg)))
    i = min(pool, key=lambda k: nll[k])
    score = f"{nll[i]:.3g} nats" if math.isfinite(nll[i]) else "not finite"
    if len(reg) == 1:
        state = ("well calibrated on every parameter" if ok
                 else "not calibrated on every parameter: read the verdicts before using its intervals")
        return reg[i], f"the only method in this report; {state}"
    if ok and len(ok) == 1:
        return reg[i], f"the only method well calibrated on every parameter (joint NLL {score})"
    if ok:
        return reg[i], f"lowest joint NLL ({score}) of the {len(ok)} methods well calibrated on every parameter"
    return reg[i], (f"no method is calibrated on every parameter; lowest joint NLL of the {len(reg)} methods "
                    f"({score}): read the verdicts before using its intervals")


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _judged(b: Mapping) -> tuple[int | None, list[float]]:
    """Simulations behind a block's verdicts and their coverage tolerances (per parameter)."""
    rec = b.get("recalibrated") or {}
    g = rec.get("n_sims") or b.get("n_sims")
    tols = [t for t in map(_finite, (rec.get("coverage_tolerance") or {}).values()) if math.isfinite(t)]
    if not tols:
        tols = [t for t in (_finite(d.get("coverage_tolerance")) for nm, d in (b.get("params") or {}).items()
                            if nm != "S8") if math.isfinite(t)]
    return (int(g) if g else None), tols


def _warning(blocks: list[Mapping], levels: Sequence[float]) -> str | None:
    """The small-test-set warning, or None (see the module docstring).

    Warns when the verdicts of some method rest on fewer than :func:`min_sims` simulations (even
    independent ones then give a tolerance above :func:`detectable_error`), or when a measured
    tolerance is above it (strongly correlated maps).
    """
    limit, need = detectable_error(levels), min_sims(levels)
    judged = [_judged(b) for b in blocks if b.get("task") != "classification"]
    counts = [g for g, _ in judged if g]
    tols = [t for _, ts in judged for t in ts]
    fails = (f"more than the {_pct(limit)} by which intervals {DETECT_WIDTH_FACTOR:g} times too narrow or too wide "
             "miss nominal coverage")
    if counts and min(counts) < need:
        g = min(counts)
        return (f"The verdicts rest on only {g} test simulations: a calibrated predictor's coverage can be off by "
                f"up to {_pct(dkw_tolerance(g))} by chance on {g} independent simulations, {fails}. Calibration "
                f"cannot be decided on this test set; that takes about {need} simulations.")
    if tols and max(tols) > limit:
        on = f"{max(counts)} test simulations" if counts else "this test set"
        return (f"The coverage tolerance of the verdicts is {_pct(max(tols))} on {on} (their maps are strongly "
                f"correlated), {fails}. Calibration cannot be decided on this test set.")
    return None


def _plural(n, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _epochs(run: Mapping) -> str | None:
    e = [int(x) for x in run.get("epochs_trained") or [] if x is not None]
    if not e:
        e = [int(x) for x in run.get("epochs_at_checkpoint") or [] if x is not None]
    if not e:
        return None
    n = f"{min(e)}" if min(e) == max(e) else f"{min(e)}–{max(e)}"
    return f"{n} epochs" + (" each" if len(e) > 1 else "")


def _trained(run: Mapping | None) -> str:
    """One line: data (simulator/suite, fields, grid, parameters, size), model, loss, epochs, networks, code."""
    if not run:
        return "not recorded (predictions.h5 written before run details were stored)"
    d = run.get("training_data") or {}
    src = []
    if d.get("simulator"):
        src.append(f"{d['simulator']} simulations")
    if d.get("suite"):
        src.append(f"suite {d['suite']}" + (f" {d['set']}" if d.get("set") else ""))
    data = ", ".join(src) or "data of unknown origin"
    fields = ", ".join(d.get("fields") or []) or "?"
    grid = f" of {d['grid']}×{d['grid']} pixels" if d.get("grid") else ""
    data += f": {fields} maps{grid}"
    if d.get("params"):
        data += f" → {', '.join(d['params'])}"
    n_tr = (d.get("n_sims") or {}).get("train")
    if n_tr:
        m_tr = (d.get("n_maps") or {}).get("train")
        data += f"; {n_tr} training simulations" + (f" ({m_tr} maps)" if m_tr else "")
    model = run.get("model") or {}
    arch = model.get("arch", "?") if isinstance(model, Mapping) else str(model)
    if isinstance(model, Mapping) and model.get("hidden") is not None:
        arch += f" (width {model['hidden']})"
    loss = run.get("loss") or {}
    loss_name = loss.get("name", "?") if isinstance(loss, Mapping) else str(loss)
    parts = [data, f"model {arch}", f"loss {loss_name}"]
    ep = _epochs(run)
    if ep:
        parts.append(ep)
    if run.get("n_networks"):
        parts.append(_plural(int(run["n_networks"]), "network"))
    if run.get("code_version"):
        parts.append(f"code {run['code_version']}")
    return " · ".join(parts)


def _evaluated(b: Mapping) -> str:
    run = b.get("run") or {}
    ev = run.get("evaluated") or {}
    split = ev.get("split") or b.get("split") or "?"
    n = ev.get("n_maps") or b.get("n")
    g = ev.get("n_sims") or b.get("n_sims")
    where = f" of suite {ev['suite']}" if ev.get("suite") else ""
    size = f"{n} maps" + (f" of {g} simulations" if g else "")
    g_judged = (b.get("recalibrated") or {}).get("n_sims")
    judged = ""
    if g_judged and g and int(g_judged) < int(g):
        judged = f"; the verdicts judge the {g_judged} simulations not used to fit recalibration"
    return f"{split} split{where}: {size}{judged}"


# --------------------------------------------------------------------------- the headline


def headline(metrics: Mapping[str, Any]) -> dict:
    """The headline of one report from its ``metrics.json`` content.

    Returns ``{"method", "why", "rule", "verdicts", "statuses", "warning", "trained", "evaluated"}``:
    ``method`` the label of the method to trust (rule: :data:`RULE`, see the module docstring),
    ``why`` the reason in a few words, ``verdicts`` ``{param: short verdict}`` of that method
    (``Verdict.summary``), ``statuses`` ``{param: status}``, ``warning`` the small-test-set
    warning or None, ``trained`` one line on what was trained on what (from the ``run`` details
    of its predictions, when stored), ``evaluated`` one line on the data its verdicts rest on.
    """
    blocks = _blocks(metrics)
    levels = metrics.get("levels") or DEFAULT_LEVELS
    best, why = _pick(blocks)
    verdicts, statuses = {}, {}
    for nm, v in (best.get("verdicts") or {}).items():
        verdicts[nm] = v.get("summary") or v.get("status") or v.get("text", "")
        statuses[nm] = v.get("status", "")
    if best.get("task") == "classification":
        for nm, d in (best.get("params") or {}).items():
            verdicts[nm] = (f"accuracy {_finite(d.get('accuracy')):.3g}, ECE {_finite(d.get('ece')):.3g}, "
                            f"log-loss {_finite(d.get('log_loss')):.3g}")
            statuses[nm] = "classification"
    return {
        "method": _label(best),
        "why": why,
        "rule": RULE if best.get("task") != "classification" else "Trust the method with the lowest log-loss.",
        "verdicts": verdicts,
        "statuses": statuses,
        "warning": _warning(blocks, levels),
        "trained": _trained(best.get("run")),
        "evaluated": _evaluated(best),
    }
