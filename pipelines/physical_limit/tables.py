"""The benchmark's section of ``benchmarks/RESULTS.md``: markdown tables of the JSON figures.

:func:`render_section` writes the section "## Physical limit (statistical benchmark)" from the
results JSON and the run record; :func:`update_results_md` puts it in place of the old one (the
other sections untouched), keeping the hand-written ``### Notes`` (:func:`old_notes`).
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

from cosmoinfer.errors import atomic_write_text
from pipelines.physical_limit.tasks import CROSS, HEADS_ORDER, MULTI_FIELDS

SECTION = "## Physical limit (statistical benchmark)"
#: the heads part's targets (flow head): expected KL, marginal efficiency, joint HPD coverage error;
#: the BNN's median width ratio band
#: and the full-covariance heads' marginal efficiency ("trains as well as the diagonal one")
HEADS_TARGETS = {"expected_kl": 0.05, "efficiency": 0.98, "hpd_coverage_error": 0.02, "bnn_std_ratio": 0.1,
                 "fullcov_efficiency": 0.97}
_HEADS_MODEL = {"diagonal": "diagonal Gaussian (grf_fisher)", "fullcov": "full covariance, β = 0.5",
                "mdn": "MDN (3 full-covariance components)", "flow": "flow", "flow_ensemble": "flow ensemble (no TTA)",
                "flow_on_diagonal": "flow on the diagonal network's frozen backbone",
                "flow_views": "flow on the frozen backbone's view-averaged features",
                "diagonal_12min": "diagonal Gaussian, 12-minute budget",
                "flow_views_12min": "flow on the view-averaged features of the 12-minute backbone",
                "fullcov_views_12min": "full covariance on the view-averaged features of the 12-minute backbone",
                "diagonal_20min": "diagonal Gaussian, 20-minute budget",
                "flow_views_20min": "flow on the view-averaged features of the 20-minute backbone",
                "bnn": "BNN (mean-field head, diagonal Gaussian)",
                "bnn_views_12min": "BNN head on the view-averaged features of the 12-minute backbone",
                "ps_flow": "flow on the power-spectrum backbone",
                "ps_flow_ensemble": "flow ensemble on the power-spectrum backbone", "sbi_ps": "sbi NPE, spline flow on the power spectrum",
                "sbi_cnn": "sbi NPE, spline flow on a CNN embedding"}
TARGETS = {"efficiency": 0.97, "std_ratio": 0.05, "mean_shift": 0.2, "coverage_error_recalibrated": 0.02,
           "train_minutes": 20.0, "camels_gain": 0.10}
_GRF_MODEL = {"grf_fisher": "CNN (default, member 0), TTA", "grf_fisher_ensemble": "CNN ensemble, TTA",
              "grf_fisher_no_tta": "CNN (default, member 0), no TTA"}


def _f(x, digits=3) -> str:
    if x is None:
        return "—"
    return f"{x:.2e}" if 0 < abs(x) < 1e-3 else f"{x:.{digits}f}"


def _mark(ok) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


def _check(x, ok) -> str:
    """``_f(x)`` and its target mark: ``ok(x)``, none when ``x`` is missing."""
    return _f(x) + _mark(None if x is None else ok(x))


def _gain(d: dict, ok=None) -> str:
    """``+7.2% [−3.1, +16.0] ✗``: the CNN's RMSE gain, its bootstrap interval and the target mark."""
    g, lo, hi = d.get("rmse_gain"), d.get("rmse_gain_lo"), d.get("rmse_gain_hi")
    if g is None:
        return "—"
    ci = "" if lo is None or hi is None else f" [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return f"{100 * g:+.1f}%{ci}{_mark(ok)}"


def _ci(d: dict, pre: str) -> str:
    """`` [low, high]`` of the isotonic coverage error's bootstrap interval, if recorded."""
    lo, hi = d.get(pre + "coverage_error_isotonic_ci_low"), d.get(pre + "coverage_error_isotonic_ci_high")
    return "" if lo is None or hi is None else f" [{_f(lo)}, {_f(hi)}]"


def _grf_row(exp: str, nm: str, model: str, d: dict, pre: str) -> str:
    """One network's row of :func:`grf_table` (keys of ``d`` prefixed ``pre``)."""
    def g(k):
        return d.get(pre + k)

    recal = TARGETS["coverage_error_recalibrated"]
    minutes = g("train_minutes")
    timed = None if pre or exp != "grf_fisher" or minutes is None else minutes <= TARGETS["train_minutes"]
    cells = [exp, nm, model,
             _check(g("efficiency"), lambda x: x >= TARGETS["efficiency"]),
             _check(g("std_ratio_median"), lambda x: abs(x - 1) <= TARGETS["std_ratio"]),
             _check(g("mean_shift"), lambda x: x <= TARGETS["mean_shift"]),
             _f(g("coverage_error")),
             _check(g("coverage_error_recalibrated"), lambda x: x <= recal),
             _check(g("coverage_error_isotonic"), lambda x: x <= recal) + _ci(d, pre),
             _f(g("rmse"), 4),
             _f(minutes, 1) + _mark(timed)]
    return "| " + " | ".join(cells) + " |"


def grf_table(results: dict) -> list[str]:
    rows = ["| experiment | parameter | model | efficiency | median std ratio | mean shift | coverage err. | "
            "coverage err. recal. (variance scaling) | "
            "coverage err. recal. (isotonic) [95% sim. bootstrap] | RMSE | train min |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    exps = [e for e in results if e.startswith("grf_fisher")]
    for exp in exps:
        for nm, d in results.get(exp, {}).items():
            if nm == "joint":  # whole-predictive figures: grf_joint_table
                continue
            models = [("", _GRF_MODEL.get(exp, "CNN"))]
            if exp == "grf_fisher":
                models += [("baseline_", "PS baseline"), ("exact_", "exact posterior (Gaussian summary)")]
            for pre, model in models:
                if pre == "exact_":
                    rows.append(f"| {exp} | {nm} | {model} | 1 | 1 | 0 | "
                                f"{_f(d.get('exact_coverage_error'))} | "
                                f"{_f(d.get('exact_coverage_error_recalibrated'))} | "
                                f"{_f(d.get('exact_coverage_error_isotonic'))}{_ci(d, 'exact_')} | "
                                f"{_f(d.get('exact_rmse'), 4)} | — |")
                else:
                    rows.append(_grf_row(exp, nm, model, d, pre))
    return rows


def grf_joint_table(results: dict) -> list[str]:
    """Expected KL from the exact posterior, HPD coverage error and joint NLL of each grf model."""
    rows = ["| experiment | model | expected KL, nats [95% sim. bootstrap] | HPD coverage err. | joint NLL |",
            "|---|---|---|---|---|"]
    for exp in (e for e in results if e.startswith("grf_fisher")):
        j = results[exp].get("joint")
        if not j:
            continue
        models = [("", _GRF_MODEL.get(exp, "CNN"))]
        if exp == "grf_fisher":
            models += [("baseline_", "PS baseline"), ("exact_", "exact posterior")]
        for pre, model in models:
            if pre == "exact_":
                rows.append(f"| {exp} | {model} | 0 | {_f(j.get('exact_hpd_coverage_error'))} | "
                            f"{_f(j.get('exact_nll'))} |")
                continue
            kl, lo, hi = (j.get(pre + k) for k in ("expected_kl", "expected_kl_lo", "expected_kl_hi"))
            ci = "" if lo is None or hi is None else f" [{_f(lo)}, {_f(hi)}]"
            rows.append(f"| {exp} | {model} | {_f(kl)}{ci} | {_f(j.get(pre + 'hpd_coverage_error'))} | "
                        f"{_f(j.get(pre + 'nll'))} |")
    return rows


def _both(d: dict, params, key: str, ok=None) -> str:
    """``"0.981 ✓ / 0.975 ✗"``: ``key`` of every parameter, with target marks where ``ok`` is given."""
    return " / ".join(_check(d[nm].get(key), ok) if ok else _f(d[nm].get(key)) for nm in params)


def heads_table(results: dict) -> list[str]:
    """One row per head of the heads part: marginal figures per parameter (Omega_m / sigma_8) and joint ones.

    Target marks: the flow's (and flow ensemble's) expected KL, efficiency and HPD coverage error,
    the BNN's median width ratio, the full-covariance heads' efficiency (:data:`HEADS_TARGETS`).
    """
    rows = ["| head | efficiency Ω_m / σ_8 | median width ratio | mean shift | marginal coverage err. | "
            "HPD coverage err. | expected KL, nats [95% sim. bootstrap] | train min (epochs, run) |",
            "|---|---|---|---|---|---|---|---|"]
    t = HEADS_TARGETS
    for label in HEADS_ORDER:
        d = results.get(f"grf_heads_{label}")
        if not d:
            continue
        params = [nm for nm in d if nm not in ("joint", "run")]
        j = d.get("joint") or {}
        flow = label.startswith(("flow", "ps_flow"))  # our flows and flow ensembles (not sbi's): the flow targets
        eff_target = t["efficiency"] if flow else t["fullcov_efficiency"] if label.startswith("fullcov") else None
        run = d.get("run") or {}

        kl, lo, hi = (j.get(k) for k in ("expected_kl", "expected_kl_lo", "expected_kl_hi"))
        ci = "" if lo is None or hi is None else f" [{_f(lo)}, {_f(hi)}]"
        kl_cell = _f(kl) + ci + _mark(None if not flow or kl is None else kl <= t["expected_kl"])
        hpd = j.get("hpd_coverage_error")
        minutes = [d[nm].get("train_minutes") for nm in params]
        rows.append("| " + " | ".join([
            _HEADS_MODEL.get(label, label),
            _both(d, params, "efficiency", (lambda x, e=eff_target: x >= e) if eff_target else None),
            _both(d, params, "std_ratio_median", (lambda x: abs(x - 1) <= t["bnn_std_ratio"]) if label.startswith("bnn") else None),
            _both(d, params, "mean_shift"), _both(d, params, "coverage_error"),
            _f(hpd) + _mark(None if not flow or hpd is None else hpd <= t["hpd_coverage_error"]),
            kl_cell, (_f(minutes[0], 1) if minutes else "—")
            + (f" ({run['epochs']} ep., {run['date'][:10]})" if run.get("epochs") and run.get("date") else "")]) + " |")
    exact = next((results[f"grf_heads_{k}"]["joint"] for k in HEADS_ORDER
                  if (results.get(f"grf_heads_{k}") or {}).get("joint")), None)
    oracle = (results.get("grf_heads_oracle_gaussian") or {}).get("joint")
    if oracle:
        lo, hi = oracle.get("expected_kl_lo"), oracle.get("expected_kl_hi")
        ci = "" if lo is None or hi is None else f" [{_f(lo)}, {_f(hi)}]"
        rows.append(f"| oracle: exact mean and covariance as one Gaussian | 1 / 1 | 1 / 1 | 0 / 0 | — | — | "
                    f"{_f(oracle.get('expected_kl'))}{ci} | — |")
    if exact:
        rows.append(f"| exact posterior | 1 / 1 | 1 / 1 | 0 / 0 | — | {_f(exact.get('exact_hpd_coverage_error'))} "
                    "| 0 | — |")
    return rows


def heads_kl_gains(results: dict) -> list[str]:
    """A sentence on each head's paired expected-KL difference from sbi's NPE on the power spectrum, if scored."""
    parts = []
    for label in HEADS_ORDER:
        g = ((results.get(f"grf_heads_{label}") or {}).get("joint") or {}).get("kl_gain_over_sbi_ps")
        if g and g.get("value") is not None:
            ci = "" if g.get("lo") is None or g.get("hi") is None else f" [{_f(g['lo'])}, {_f(g['hi'])}]"
            parts.append(f"{_HEADS_MODEL.get(label, label)} {_f(g['value'])}{ci}")
    if not parts:
        return []
    return ["Paired with sbi's NPE on the power spectrum scored in the same run (same test maps, the same "
            "simulation bootstrap draws for both): KL(sbi) − KL(head) in nats, positive where the head is "
            "closer to the exact posterior: " + "; ".join(parts) + ".", ""]


def _with_ci(d: dict, key: str, digits: int = 3) -> str:
    """``0.0321 [0.0290, 0.0355]``: a figure and its simulation-bootstrap interval (``key_lo`` / ``_hi``)."""
    lo, hi = d.get(key + "_lo"), d.get(key + "_hi")
    ci = "" if lo is None or hi is None else f" [{_f(lo, digits)}, {_f(hi, digits)}]"
    return _f(d.get(key), digits) + ci


def cnn_ps_table(results: dict, keys) -> list[str]:
    """CNN vs PS baseline per parameter: RMSE and coverage error (whole predictive, before recalibration;
    after variance scaling in brackets) with 95% simulation-bootstrap intervals where recorded; the
    CNN's joint HPD coverage error on each experiment's last row."""
    rows = ["| experiment | parameter | CNN RMSE [95%] | PS RMSE [95%] | CNN gain [95% CI] | CNN cov. err. [95%] "
            "(recal.) | PS cov. err. [95%] (recal.) | CNN train min |", "|---|---|---|---|---|---|---|---|"]
    for exp in keys:
        for nm, d in results.get(exp, {}).items():
            if nm == "joint":
                hpd = d.get("hpd_coverage_error")
                if hpd is not None:
                    rows.append(f"| {exp} | joint (HPD regions) | — | — | — | {_f(hpd)} | — | — |")
                continue
            gain = d.get("rmse_gain")
            judged = gain is not None and nm in ("Omega_m", "sigma_8") and exp.startswith("camels_like_mtot")
            ok = gain >= TARGETS["camels_gain"] if judged else None
            rows.append(f"| {exp} | {nm} | {_with_ci(d, 'rmse', 4)} | {_with_ci(d, 'baseline_rmse', 4)} | "
                        f"{_gain(d, ok)} | "
                        f"{_with_ci(d, 'coverage_error')} ({_f(d.get('coverage_error_recalibrated'))}) | "
                        f"{_with_ci(d, 'baseline_coverage_error')} "
                        f"({_f(d.get('baseline_coverage_error_recalibrated'))})"
                        f" | {_f(d.get('train_minutes'), 1)} |")
    return rows


def multifield_table(results: dict) -> list[str]:
    multi = results.get("camels_like_multifield")
    if not multi:
        return []
    singles = [f for f in MULTI_FIELDS if f"camels_like_single_{f}" in results]
    rows = ["| parameter | multifield CNN | " + " | ".join(f"{f} CNN" for f in singles)
            + " | multifield best? |",
            "|---|---|" + "---|" * len(singles) + "---|"]
    for nm, d in multi.items():
        if nm == "joint":
            continue
        r = [results[f"camels_like_single_{f}"].get(nm, {}).get("rmse") for f in singles]
        best = min((x for x in r if x is not None), default=None)
        ok = None if best is None or d.get("rmse") is None else d["rmse"] < best
        rows.append(f"| {nm} | {_f(d.get('rmse'), 4)} | " + " | ".join(_f(x, 4) for x in r) +
                    f" | {'—' if ok is None else ('yes' if ok else 'no')} |")
    return rows


def cross_table(results: dict, info: dict) -> list[str]:
    rows = []
    verd = (info.get("cross") or {}).get("verdicts", {})
    for suffix, (cnn, ps) in CROSS.items():
        d = results.get(f"cross_suite_SynthTNG_to_SynthSIMBA{suffix}")
        if not d:
            continue
        fields = {"": "Mtot", "_Mgas": "Mgas", "_multifield": "Mtot, Mgas, T, Mstar"}.get(suffix, suffix)
        rows += ([""] if rows else []) + [
            f"Maps: {fields}.", "",
            "| parameter | model | RMSE in-suite (TNG test) | RMSE foreign (SIMBA all) | ratio | "
            "cov. err. in-suite | cov. err. foreign | foreign, recal. on TNG val |",
            "|---|---|---|---|---|---|---|---|"]
        for nm, m in d.items():
            for pre, model in (("", "CNN"), ("baseline_", "PS")):
                if m.get(pre + "rmse") is None:
                    continue
                rows.append(f"| {nm} | {model} | {_f(m.get(pre + 'in_suite_rmse'), 4)} | "
                            f"{_f(m.get(pre + 'rmse'), 4)} | {_f(m.get(pre + 'rmse_degradation'), 2)} | "
                            f"{_f(m.get(pre + 'in_suite_coverage_error'))} | "
                            f"{_f(m.get(pre + 'coverage_error'))} | "
                            f"{_f(m.get(pre + 'coverage_error_recalibrated'))} |")
        for name in (cnn, ps):
            blocks = verd.get(name) if name else None
            if not blocks:
                continue
            rows += ["", f"Report verdicts ({name}, recalibration fitted on SynthTNG val):"]
            if "error" in blocks:
                rows.append(f"- report failed: {blocks['error']}")
                continue
            for label, vs in blocks.items():
                for v in vs.values():
                    rows.append(f"- {label}: **{v.get('status')}** — {v.get('text')}")
    return rows


def sweep_table(results: dict) -> list[str]:
    keys = [k for k in results if k.startswith("sweep_")]
    if not keys:
        return []
    rows = ["| non-Gaussianity | parameter | CNN RMSE | PS RMSE | CNN gain [95% CI] |",
            "|---|---|---|---|---|"]
    for k in sorted(keys, key=lambda k: float(k.rsplit("_", 1)[1])):
        for nm, d in results[k].items():
            if nm == "joint":
                continue
            rows.append(f"| {k[len('sweep_'):].replace('_', ' ')} | {nm} | {_f(d.get('rmse'), 4)} | "
                        f"{_f(d.get('baseline_rmse'), 4)} | {_gain(d)} |")
    return rows


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        model = m.group(1).strip() if m else model
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def _grf_section(results: dict, info: dict) -> list[str]:
    g = grf_table(results)
    if len(g) <= 2:
        return []
    fit = info.get("recalibration_fit") or {k: f"{v} val maps" for k, v in info.get("n_val", {}).items()}
    L = ["### grf_fisher: networks against the exact posterior", "",
         f"Targets: efficiency ≥ {TARGETS['efficiency']}, "
         f"median std ratio within 1 ± {TARGETS['std_ratio']}, "
         f"mean shift ≤ {TARGETS['mean_shift']}, coverage error after recalibration ≤ "
         f"{TARGETS['coverage_error_recalibrated']}, default network trained within "
         f"{TARGETS['train_minutes']:.0f} min (✓/✗ per figure). "
         f"Test maps: {info.get('n_test', {})}; recalibrations fitted on {fit} "
         "(calibration maps: fresh simulations of their own seed, evaluated like test).", ""]
    L += g
    jt = grf_joint_table(results)
    if len(jt) > 2:
        L += ["", "The whole predictive against the exact posterior (test maps): expected KL divergence from "
              "the exact posterior (mean of log p_exact − log q at the truth), coverage error of the "
              "highest-density regions, joint NLL (the exact posterior's is the floor; NLL − exact NLL = "
              "expected KL).", ""] + jt
    mem = (info.get("grf") or {}).get("members", [])
    if mem:
        base = info["grf"]["baseline"]
        L += ["", "Training: " + "; ".join(
            f"member {m['member']}: {_f(m['minutes'], 1)} min, {m['epochs']} epochs" for m in mem) +
            f"; PS baseline: {_f(base['minutes'], 1)} min, {base['epochs']} epochs."]
    return L + [""]


def render_section(results: dict, info: dict, notes: str) -> str:
    L = [SECTION, ""]
    L += [f"Last run: {info['date']} on {info['machine']}; command `{info['command']}` "
          f"(scale `{info['scale']}`, parts {', '.join(info['parts'])}, {info['jobs']} stages at a time with "
          f"{info['threads']} thread(s) each; wall time of this invocation {info['wall_minutes']:.1f} min). "
          "Times are wall clock on a machine shared with other jobs, so they are upper bounds. "
          "Figures: `benchmarks/results/physical_limit.json`.", ""]
    if info.get("parts_run"):
        L += ["Each part's last run (scale, date): " +
              "; ".join(f"{p}: {v}" for p, v in sorted(info["parts_run"].items())) + ".", ""]
    if info.get("failed"):
        L += ["Failed or skipped stages: " + "; ".join(f"`{k}`: {v}" for k, v in info["failed"].items()), ""]
    L += _grf_section(results, info)
    h = heads_table(results)
    if len(h) > 2:
        n = (info.get("heads") or {}).get("n_test") or {}
        L += ["### Head by head: Gaussian, full covariance, MDN, flow, flow ensemble, BNN, sbi NPE", "",
              f"Fresh grf maps (`heads` in the scale config), every network trained under the same wall-clock "
              f"budget, scored on the same {max(n.values()) if n else '?'} test maps against their exact "
              "posterior; every figure from the stored predictive, before any recalibration (marginal coverage "
              "from its PIT, HPD coverage from its density). Targets (flow): expected KL ≤ "
              f"{HEADS_TARGETS['expected_kl']}, efficiency ≥ {HEADS_TARGETS['efficiency']}, HPD coverage error ≤ "
              f"{HEADS_TARGETS['hpd_coverage_error']}; BNN median width ratio within 1 ± "
              f"{HEADS_TARGETS['bnn_std_ratio']}. Train minutes: wall clock, summed over an ensemble's members "
              "(for a head on another network's frozen backbone, that network's minutes included); epochs and "
              "the run's date where recorded: the budget buys more epochs on a faster or idler machine, so "
              "compare rows of one run.",
              ""] + h + [""] + heads_kl_gains(results)
    c = cnn_ps_table(results, ["camels_like_mtot", "camels_like_multifield"] +
                     [f"camels_like_single_{f}" for f in MULTI_FIELDS])
    if len(c) > 2:
        L += ["### camels_like: CNN vs power-spectrum baseline", "",
              f"Target: CNN RMSE ≥ {100 * TARGETS['camels_gain']:.0f}% below the PS baseline on Omega_m and "
              "sigma_8 (Mtot). Coverage errors before (after) variance scaling fitted on val.", ""] + c + [""]
        mf = multifield_table(results)
        if mf:
            L += ["Multifield (Mtot, Mgas, T, Mstar as channels) vs a CNN on each single field, "
                  "same parameters and data (test RMSE):", ""] + mf + [""]
    x = cross_table(results, info)
    if x:
        L += ["### Cross-suite: trained on SynthTNG, tested on every SynthSIMBA map", ""] + x + [""]
    s = sweep_table(results)
    if s:
        L += ["### Non-Gaussianity sweep (Mtot, `simulator.lognormal_amplitude`)", ""] + s + [""]
    L += ["### Notes", "", notes.strip() or "(none)", ""]
    return "\n".join(L)


def update_results_md(path: Path, section: str) -> None:
    """Replace the physical-limit section of ``path`` (up to the next ``## `` heading); others untouched."""
    text = path.read_text() if path.is_file() else ""
    i = text.find(SECTION)
    if i < 0:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + section.rstrip() + "\n"
    else:
        nxt = re.search(r"^## ", text[i + len(SECTION):], flags=re.M)
        end = len(text) if nxt is None else i + len(SECTION) + nxt.start()
        tail = text[end:]
        text = text[:i] + section.rstrip() + "\n" + ("\n" + tail if tail else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def old_notes(path: Path) -> str:
    """The hand-written ``### Notes`` of the existing section (kept across reruns)."""
    if not path.is_file():
        return ""
    text = path.read_text()
    i = text.find(SECTION)
    if i < 0:
        return ""
    body = text[i + len(SECTION):]
    nxt = re.search(r"^## ", body, flags=re.M)
    body = body if nxt is None else body[:nxt.start()]
    j = body.find("### Notes")
    return "" if j < 0 else body[j + len("### Notes"):].strip()
