"""Smoke test of the statistical benchmark command (``python -m pipelines.physical_limit``).

Only the shape of the results is checked here: the statistical targets are measured by the
benchmark itself (benchmarks/RESULTS.md), never asserted in unit tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines import physical_limit as pl

REPO = Path(__file__).resolve().parents[1]


def test_quick_grf_run_writes_json_and_table(tmp_path):
    out = tmp_path / "pl"
    js, md = tmp_path / "physical_limit.json", tmp_path / "RESULTS.md"
    md.write_text("# Benchmarks\n\n## Performance\n\nkept as is\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "pipelines.physical_limit", "--scale", "quick", "--only", "grf",
                        "--out", str(out), "--json", str(js), "--md", str(md)],
                       cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(js.read_text())
    assert set(res) == {"grf_fisher", "grf_fisher_no_tta", "grf_fisher_ensemble"}
    for exp in res.values():
        assert set(exp) == {"Omega_m", "sigma_8", "joint"}
        for nm, metrics in exp.items():
            assert set(pl.GRF_JOINT if nm == "joint" else pl.GRF_METRICS) <= set(metrics)
            assert all(v is None or isinstance(v, (int, float)) for v in metrics.values())
        j = exp["joint"]
        assert j["expected_kl_lo"] <= j["expected_kl"] <= j["expected_kl_hi"]
        # joint NLL - the exact posterior's NLL at the truths is the expected KL (the same log q)
        assert abs(j["nll"] - j["exact_nll"] - j["expected_kl"]) < 1e-3 * max(1.0, abs(j["expected_kl"]))
    assert {"baseline_" + k for k in pl.GRF_JOINT} <= set(res["grf_fisher"]["joint"])
    # the recalibrations are fitted on the calibration set (fresh simulations of their own seed), not on val
    from cosmoinfer.calibration import read_predictions
    from cosmoinfer.calibration.recalibration import fit_std_scaling

    preds = out / "grf" / "predictions" / "cnn_single"
    test, cal, val = (read_predictions(preds / s / "predictions.h5") for s in ("test", "calib", "val"))
    assert len(np.unique(cal.sim_id)) == pl.scale_config("quick")["grf"]["calib_sims"]
    assert not np.isin(cal.truth[:, 0], np.concatenate([val.truth[:, 0], test.truth[:, 0]])).any()
    scale = [res["grf_fisher"][nm]["recalibration_scale"] for nm in ("Omega_m", "sigma_8")]
    assert np.allclose(scale, fit_std_scaling(cal.truth, cal.mean, cal.std), rtol=1e-5)
    assert not np.allclose(scale, fit_std_scaling(val.truth, val.mean, val.std), rtol=1e-3)
    # the test predictions hold the exact posterior of every map (the grf simulator's hook, simulators/grf_exact_datasets.py)
    assert {"exact_mean", "exact_std", "exact_cov", "exact_log_prob", "exact_pit", "exact_hpd",
            "exact_grid"} <= set(test.extra)
    assert test.extra["exact_grid"]["log_density"].shape == (min(test.n, 8), 24, 24)  # exact_grid=24 at quick
    text = md.read_text()
    assert "| grf_fisher | exact posterior | 0 |" in text  # the joint table
    assert f"'grf_fisher': '{cal.n} calibration maps'" in text
    assert text.startswith("# Benchmarks\n\n## Performance\n\nkept as is\n")  # other sections untouched
    assert text.count(pl.SECTION) == 1 and "grf_fisher" in text
    # the run record lives beside the JSON (not in --out), so what other parts recorded survives a rerun
    info_path = tmp_path / "physical_limit_info.json"
    info = json.loads(info_path.read_text())
    assert info["parts_run"]["grf"].startswith("quick, ")
    info["parts_run"]["camels"] = "reduced, 2000-01-01 00:00"
    info["grf"]["from_an_earlier_run"] = {"minutes": 1.0}  # a record of a stage this run does not redo
    info_path.write_text(json.dumps(info))
    # a rerun finds every stage done and only recomputes the figures
    r = subprocess.run([sys.executable, "-m", "pipelines.physical_limit", "--scale", "quick", "--only", "grf",
                        "--out", str(out), "--json", str(js), "--md", str(md)],
                       cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0 and "running" not in r.stdout
    assert md.read_text().count(pl.SECTION) == 1
    assert "camels: reduced, 2000-01-01 00:00" in md.read_text()
    assert not list(out.glob("physical_limit_info.json"))
    rerun = json.loads(info_path.read_text())["grf"]  # merged model by model: this run's and the earlier one
    assert rerun["from_an_earlier_run"] == {"minutes": 1.0} and rerun["members"] == info["grf"]["members"]


def test_results_md_section_is_replaced_in_place_and_keeps_notes(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text(f"# B\n\n{pl.SECTION}\n\nold table\n\n### Notes\n\nhand-written\n\n## Later\n\nstays\n")
    notes = pl.old_notes(md)
    assert notes == "hand-written"
    pl.update_results_md(md, f"{pl.SECTION}\n\nnew table\n\n### Notes\n\n{notes}\n")
    text = md.read_text()
    assert "old table" not in text and "new table" in text and "hand-written" in text
    assert text.index(pl.SECTION) < text.index("## Later") and text.endswith("stays\n")


@pytest.mark.parametrize("scale", ["quick", "reduced", "full"])
def test_every_scale_builds_a_consistent_task_graph(tmp_path, scale):
    tasks = pl.all_tasks(tmp_path, pl.scale_config(scale), pl.PARTS)
    names = {t.name for t in tasks}
    assert len(names) == len(tasks)
    assert all(d.name in names for t in tasks for d in t.inputs)
    cross = [t for t in tasks if t.name.startswith("cross evaluate")]
    assert cross and all("split=all" in t.args and "data.suite=SynthSIMBA" in t.args for t in cross)
    # every CNN is evaluated with test-time augmentation (member 0 also without), no baseline is, nor a
    # view-averaged head (invariant already)
    evals = [t for t in tasks if " evaluate " in t.name]
    view_avg = {t.folder.name[:-len("_head")] for t in tasks if t.name.endswith(" head")
                and "model.view_average=true" in t.args}
    cnn = [t for t in evals if " cnn" in t.name and "no_tta" not in t.name and t.name.split()[2] not in view_avg]
    assert cnn and all("tta=true" in t.args for t in cnn)
    assert all("tta=true" not in t.args for t in evals if " ps" in t.name or "no_tta" in t.name)
    assert any("no_tta" in t.name for t in evals)


def test_bootstrap_gain_resamples_simulations():
    """The interval brackets the true gain when the CNN errors are half the baseline's, and
    contains 0 when both have errors of the same size; it is wider with fewer simulations."""
    rng = np.random.default_rng(0)
    n_sims, per = 400, 15
    sim = np.repeat(np.arange(n_sims), per)
    truth = np.repeat(rng.uniform(size=(n_sims, 2)), per, axis=0)
    e_ps = rng.normal(size=truth.shape)
    lo, hi = pl.bootstrap_gain(truth, truth + 0.5 * e_ps, truth + e_ps, sim)
    assert np.allclose(lo, 0.5) and np.allclose(hi, 0.5)  # the same errors, halved: no spread
    e_cnn = rng.normal(size=truth.shape)
    lo, hi = pl.bootstrap_gain(truth, truth + e_cnn, truth + e_ps, sim)
    assert np.all(lo < 0) and np.all(hi > 0)
    # gain = 1 - sqrt(SSE_a / SSE_b), two independent chi2 sums over N = 6000 maps: sd ~ 1/sqrt(N) = 0.013,
    # so the 95% interval is ~0.05 wide; with 20 simulations (300 maps) ~0.23
    assert np.all(hi - lo > 0.02) and np.all(hi - lo < 0.1)
    lo20, hi20 = pl.bootstrap_gain(truth[: 20 * per], truth[: 20 * per] + e_cnn[: 20 * per],
                                   truth[: 20 * per] + e_ps[: 20 * per], sim[: 20 * per])
    assert np.all(hi20 - lo20 > 2 * (hi - lo))


def _preds(truth, mean, std, em, es):
    from types import SimpleNamespace

    return SimpleNamespace(truth=truth, mean=mean, std=std, extra={"exact_mean": em, "exact_std": es})


def test_exact_figures_of_a_network_that_is_the_exact_posterior():
    """A network that outputs the exact posterior's mean and std scores efficiency 1, std ratio 1,
    shift 0, and the same isotonic-recalibrated coverage error as the exact posterior's floor."""
    from cosmoinfer.calibration.metrics import coverage_tolerance

    rng = np.random.default_rng(0)

    def draw(n):
        std = rng.uniform(0.05, 0.2, size=(n, 2))
        mean = rng.uniform(0.3, 0.7, size=(n, 2))
        truth = mean + std * rng.standard_normal((n, 2))  # Gaussian posteriors: calibrated
        return _preds(truth, mean, std, mean, std)

    test, val = draw(20000), draw(4000)
    ex = pl.exact_figures(test, val)
    cal = pl.calibration_figures(test, val)
    np.testing.assert_allclose(ex["efficiency"], 1.0)
    np.testing.assert_allclose(ex["std_ratio_median"], 1.0)
    np.testing.assert_allclose(ex["mean_shift"], 0.0)
    np.testing.assert_allclose(ex["exact_coverage_error_isotonic"], cal["coverage_error_isotonic"])
    # calibrated Gaussians: every coverage error is within the DKW tolerance of the maps involved
    assert np.all(ex["exact_coverage_error"] <= coverage_tolerance(20000))
    assert np.all(ex["exact_coverage_error_isotonic"] <= coverage_tolerance(4000) + coverage_tolerance(20000))
    # a network with its means off by half a posterior std loses efficiency and shows the shift
    off = _preds(test.truth, test.mean + 0.5 * test.std, test.std, test.mean, test.std)
    ex_off = pl.exact_figures(off, val)
    np.testing.assert_allclose(ex_off["efficiency"], 1 / 1.25, rtol=0.03)
    np.testing.assert_allclose(ex_off["mean_shift"], 0.5)  # RMS over maps of the shift in exact stds
    # the exact posterior's own figures depend on the maps only: computed once, passed in, or left out
    ref = pl.exact_reference(test, val)
    assert set(ref) == {k for k in ex if k.startswith("exact_")}
    for k, v in pl.exact_figures(off, val, reference=ref).items():
        np.testing.assert_array_equal(v, ex_off[k])
    assert not any(k.startswith("exact_") for k in pl.exact_figures(off, val, reference={}))


def test_isotonic_error_interval_resamples_simulations_and_narrows_with_more_of_them():
    """Calibrated Gaussian predictions, 15 maps per simulation: the bootstrap interval of the isotonic
    coverage error is ordered, within twice the DKW tolerance of the two sets, and wider for a val
    set of fewer simulations."""
    from types import SimpleNamespace

    from cosmoinfer.calibration.metrics import coverage_tolerance

    rng = np.random.default_rng(1)

    def draw(n_sims, per=15):
        std = np.repeat(rng.uniform(0.05, 0.2, size=(n_sims, 2)), per, axis=0)
        mean = np.repeat(rng.uniform(0.3, 0.7, size=(n_sims, 2)), per, axis=0)
        truth = mean + std * rng.standard_normal(mean.shape)
        return SimpleNamespace(truth=truth, mean=mean, std=std, sim_id=np.repeat(np.arange(n_sims), per))

    test = draw(600)
    lo, hi = pl.isotonic_error_interval(test, draw(400), n_boot=100)
    lo_small, hi_small = pl.isotonic_error_interval(test, draw(40), n_boot=100)
    assert np.all(0 <= lo) and np.all(lo < hi) and np.all(hi < 1)
    assert np.all(hi <= 2 * (coverage_tolerance(400 * 15) + coverage_tolerance(600 * 15)))
    assert np.all(hi_small > 1.5 * hi)
    # calibration_figures(ci=True) reports it, and the figure itself lies inside it
    figs = pl.calibration_figures(test, draw(400), ci=True)
    assert np.all(figs["coverage_error_isotonic_ci_low"] <= figs["coverage_error_isotonic"])
    assert np.all(figs["coverage_error_isotonic"] <= figs["coverage_error_isotonic_ci_high"])


def test_joint_figures_of_the_exact_posterior_and_of_a_wider_one(tmp_path):
    """joint_figures reads compute_metrics' joint block: expected KL 0 for q = p_exact, the analytic
    KL for a Gaussian 1.5x too wide, joint NLL - exact NLL = expected KL, and the baseline prefix."""
    from cosmoinfer.data.priors import Prior
    from cosmoinfer.posterior import Bijection, MixturePredictive, read_predictions, write_predictions

    rng = np.random.default_rng(2)
    n_sims, per = 150, 15
    priors = [Prior("Omega_m", -10.0, 10.0), Prior("sigma_8", -10.0, 10.0)]  # wide box: Gaussians unclipped
    theta = np.repeat(rng.uniform(-1, 1, (n_sims, 2)), per, axis=0)
    sd = rng.uniform(0.05, 0.2, theta.shape)
    x = theta + sd * rng.standard_normal(theta.shape)  # exact posterior N(x, sd^2)
    bij = Bijection.identity(2, priors)
    exact = MixturePredictive.from_gaussians(x[:, None], sd[:, None] ** 2, bij, ["Omega_m", "sigma_8"])
    lp = exact.log_prob(theta)
    out = {}
    for name, s in (("exact", 1.0), ("wide", 1.5)):
        q = MixturePredictive.from_gaussians(x[:, None], (s * sd[:, None]) ** 2, bij, ["Omega_m", "sigma_8"])
        path = write_predictions(tmp_path / f"{name}.h5", truth=theta, mean=x, std=s * sd,
                                 std_aleatoric=s * sd, std_epistemic=0 * sd,
                                 sim_id=np.repeat(np.arange(n_sims), per), param_names=["Omega_m", "sigma_8"],
                                 method="single", split="test", priors=priors,
                                 extra_datasets={"exact_log_prob": lp,
                                                 "exact_hpd": exact.hpd_credibility(theta, rng)},
                                 predictive=q)
        out[name] = pl.joint_figures(read_predictions(path), "baseline_" if name == "wide" else "",
                                     exact=True)
        out[name + "_pred"] = read_predictions(path)
    ex, wide = out["exact"], out["wide"]
    assert abs(ex["expected_kl"]) < 1e-6 and ex["expected_kl_lo"] <= 1e-9 and ex["expected_kl_hi"] >= -1e-9
    assert abs(ex["nll"] - ex["exact_nll"]) < 1e-6
    kl = 2 * (np.log(1.5) + 1 / 4.5 - 0.5)
    assert wide["baseline_expected_kl_lo"] < kl < wide["baseline_expected_kl_hi"]
    assert abs(wide["baseline_nll"] - wide["exact_nll"] - wide["baseline_expected_kl"]) < 1e-4
    assert ex["hpd_coverage_error"] < 0.1 and wide["baseline_hpd_coverage_error"] > ex["hpd_coverage_error"]
    # the paired difference: KL(wide) - KL(exact) is the analytic KL, positive the other way round's negative,
    # its interval tighter than the two KL intervals side by side; predictions of other maps: no figure
    gain = pl.kl_gain(out["exact_pred"], out["wide_pred"])
    assert gain["lo"] < kl < gain["hi"] and abs(gain["value"] - wide["baseline_expected_kl"]) < 1e-6
    back = pl.kl_gain(out["wide_pred"], out["exact_pred"])
    assert abs(back["value"] + gain["value"]) < 1e-9 and back["hi"] < 0
    assert gain["hi"] - gain["lo"] <= wide["baseline_expected_kl_hi"] - wide["baseline_expected_kl_lo"] + 1e-9
    assert pl.kl_gain(out["exact_pred"].subset(np.arange(per, n_sims * per)), out["wide_pred"]) is None




def test_stage_graph_runs_in_parallel_records_failures_and_redoes_what_changed(tmp_path, capsys):
    """The benchmark's runner (StageRunner.run_graph): independent stages run at once, in their cwd and
    environment; a failed stage's dependents are skipped while the others run; a rerun reuses what
    finished, and a changed configuration redoes the stage and everything downstream."""
    from cosmoinfer.errors import InputError
    from cosmoinfer.stages import FolderLock, Stage, StageRunner

    (tmp_path / "toy_stage.py").write_text(  # found by python -m in the stage's cwd
        "import os, pathlib, sys, time\n"
        "out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)\n"
        "t0 = time.time(); time.sleep(float(sys.argv[2]))\n"
        "(out / 'times.txt').write_text(f'{t0} {time.time()}')\n"
        "if sys.argv[3] == 'fail':\n    print('error: it failed on purpose'); sys.exit(2)\n"
        "(out / 'done.txt').write_text(os.environ['TOY'])\n")
    out = tmp_path / "out"

    def stage(name, inputs=(), how="ok", sleep=0.0, value=1):
        return Stage(name=name, module="toy_stage", config_name="toy",
                     args=[str(out / name), str(sleep), how], folder=out / name,
                     log_file=out / "logs" / f"{name}.log", out=out, inputs=list(inputs),
                     outputs=("done.txt",), env={"TOY": name}, cwd=tmp_path, _config={"value": value})

    def graph(c_value=1):
        a, b = stage("a", sleep=1.0), stage("b", how="fail", sleep=1.0)
        c = stage("c", [a], value=c_value)
        return [a, b, c, stage("d", [b]), stage("e"), stage("f", [c])]

    failed = StageRunner(progress=False).run_graph(graph(), jobs=2)
    assert failed == {"b": "it failed on purpose", "d": "skipped: b failed"}
    assert sorted(p.parent.name for p in out.glob("*/done.txt")) == ["a", "c", "e", "f"]
    assert (out / "a" / "done.txt").read_text() == "a"  # the stage's environment
    (a0, a1), (b0, b1) = ([float(x) for x in (out / n / "times.txt").read_text().split()] for n in "ab")
    assert b0 < a1 and a0 < b1  # a and b ran at once
    assert json.loads((out / "b" / ".stage.json").read_text())["status"] == "running"
    capsys.readouterr()
    # rerun: what finished is reused, the failed stage is tried again; c's configuration changed: c, f redone
    runner = StageRunner(progress=False)
    assert runner.run_graph(graph(c_value=2), jobs=1) == failed
    lines = capsys.readouterr().out
    assert "[a] reused" in lines and "[e] reused" in lines
    assert "[c] ran in" in lines and "configuration changed: value 1 -> 2" in lines
    assert "[f] ran in" in lines and "input changed: c" in lines
    assert sorted(n for n, what, _ in runner.summary if what == "ran") == ["c", "f"]
    # a second run into the same folder stops at once, naming the holder
    with FolderLock(out, holder="python -m pipelines.physical_limit", option="--out"):
        with pytest.raises(InputError, match=r"another python -m pipelines.physical_limit \(pid \d+\) is "):
            with FolderLock(out):
                pass


def test_heads_part_trains_every_head_under_one_budget_and_evaluates_each_predictive(tmp_path):
    """Every network of the heads part gets the same trainer.max_time on the same maps and split; the BNN
    is evaluated by evaluator=bnn, the flow ensemble mixes the flow members, the sbi peers get the same
    budget in minutes and the same split, and every timed training is listed before any evaluation."""
    sc = pl.scale_config("full")
    h = sc["heads"]
    tasks = pl.heads_tasks(tmp_path, sc)
    names = [t.name for t in tasks]
    trains = [t for t in tasks if t.name.startswith("heads train")]
    assert {t.name for t in trains} >= {f"heads train {k}" for k in ("diagonal", "fullcov", "mdn", "flow", "bnn")}
    ensembles = {f"{k}_ensemble": int(n) for k, n in h["ensembles"].items()}
    assert set(ensembles) == {"flow_ensemble", "ps_flow_ensemble"}
    assert len(trains) == len(h["heads"]) + sum(n - 1 for n in ensembles.values())
    for t in trains:
        assert f"trainer.max_time={h['budget']}" in t.args and f"data.split_fractions={h['split']}" in t.args
        assert t.inputs[0].name == "heads simulate"
    evals = {t.name.removeprefix("heads evaluate "): t for t in tasks if t.name.startswith("heads evaluate")}
    bnns = [k for k in evals if k.startswith("bnn")]
    assert {"bnn", "bnn_views_12min"} <= set(bnns)
    assert all("evaluator=bnn" in evals[k].args and "evaluator=single" not in evals[k].args for k in bnns)
    by_name = {t.name: t for t in trains}
    for label, n in ensembles.items():  # the head's network and n - 1 more of its overrides, seeds 1 .. n - 1
        head = label.removesuffix("_ensemble")
        ens = next(a for a in evals[label].args if a.startswith("checkpoints="))
        assert ens.count("best.ckpt") == n and "evaluator=ensemble" in evals[label].args
        assert f"/models/{head}/checkpoints" in ens and f"/models/{head}_{n - 1}/checkpoints" in ens
        for i in range(1, n):
            member = by_name[f"heads train {head} {i}"]
            assert f"seed={i}" in member.args and set(h["heads"][head]) <= set(member.args)
    assert all(("tta=true" in t.args) != (k.startswith("ps_") or k in ensembles)
               and f"exact_grid={h['exact_grid']}" in t.args for k, t in evals.items())
    peers = [t for t in tasks if t.name.startswith("heads sbi")]
    assert [t.name for t in peers] == [f"heads sbi {e}" for e in h["sbi"]]
    minutes = pl.tasks._minutes(h["budget"])
    for t in peers:
        assert t.module == "pipelines.physical_limit.sbi_npe"
        assert f"--budget-min={minutes}" in t.args and f"--split-fractions={h['split'].strip('[]')}" in t.args
    last_timed = max(names.index(t.name) for t in [*trains, *peers])
    assert last_timed < min(names.index(f"heads evaluate {k}") for k in evals)
    # a different budget is a different stage (fingerprint), for the sbi peers too
    other = dict(sc, heads=dict(h, budget="00:00:09:00"))
    assert pl.heads_tasks(tmp_path, other)[-len(evals) - 1].fingerprint != tasks[-len(evals) - 1].fingerprint
    # an ensemble of a head the part does not train is a config error naming the key
    with pytest.raises(pl.tasks.InputError, match=r"heads\.ensembles: 'nope' is not a head of heads\.heads"):
        pl.heads_tasks(tmp_path, dict(sc, heads=dict(h, ensembles={"nope": 2})))


def test_camels_models_are_evaluated_as_their_presets_pipeline_evaluates_them(tmp_path, monkeypatch):
    """A preset with ``pipeline.head`` (camels_like_mtot) gets a head stage on its CNN's frozen backbone, which
    every evaluation of that CNN reads (in-suite and cross-suite, without TTA: the head averages the views);
    a preset without one (here camels_like_multifield with its head taken away) is evaluated as trained, with TTA."""
    sc = pl.scale_config("full")
    head = pl.tasks.preset_head("camels_like_mtot")
    assert "model.view_average=true" in head
    real = pl.tasks.preset_head
    monkeypatch.setattr(pl.tasks, "preset_head", lambda exp: [] if exp == "camels_like_multifield" else real(exp))
    tasks = {t.name: t for t in pl.all_tasks(tmp_path, sc, ["camels", "cross"])}
    cnn, stage = tasks["camels train mtot_cnn"], tasks["camels train mtot_cnn head"]
    assert cnn in stage.inputs and f"transfer.checkpoint={cnn.folder / 'checkpoints' / 'best.ckpt'}" in stage.args
    assert stage.args[-len(head) - 1:-1] == head  # the preset's overrides, after the model's own
    for name in ("camels evaluate mtot_cnn test", "camels evaluate mtot_cnn calib", "cross evaluate mtot_cnn SynthSIMBA"):
        assert tasks[name].inputs[0] is stage and "tta=true" not in tasks[name].args, name
    assert "camels train multifield_cnn head" not in tasks and "camels train mtot_ps head" not in tasks
    assert "tta=true" in tasks["camels evaluate multifield_cnn test"].args


def test_a_head_on_another_heads_backbone_reads_its_checkpoint_and_runs_after_it(tmp_path):
    """``transfer.checkpoint=@diagonal`` becomes the diagonal stage's best.ckpt and an input of the stage (so
    a retrained diagonal network retrains the flow on it); ``--stages`` keeps the stages it names with the
    stages they read, in the runner's order, and refuses a pattern that matches nothing."""
    sc = pl.scale_config("full")
    tasks = {t.name: t for t in pl.heads_tasks(tmp_path, sc)}
    flow, diag = tasks["heads train flow_on_diagonal"], tasks["heads train diagonal"]
    assert f"transfer.checkpoint={diag.folder / 'checkpoints' / 'best.ckpt'}" in flow.args
    assert diag in flow.inputs and "loss=flow" in flow.args
    sub = pl.tasks.select_stages(pl.all_tasks(tmp_path, sc, ["heads"]), ["heads * flow_on_diagonal", "heads sbi ps"])
    assert [t.name for t in sub] == ["heads simulate", "heads train diagonal", "heads train flow_on_diagonal",
                                     "heads sbi ps", "heads evaluate flow_on_diagonal"]
    with pytest.raises(pl.tasks.InputError, match="'heads \\* nope' matches no stage"):
        pl.tasks.select_stages(pl.all_tasks(tmp_path, sc, ["heads"]), ["heads * nope"])


def test_heads_table_marks_the_flow_targets_and_the_bnn_width_band():
    def entry(eff, ratio, kl, hpd):
        p = {"efficiency": eff, "std_ratio_median": ratio, "mean_shift": 0.1, "coverage_error": 0.01,
             "rmse": 0.05, "train_minutes": 8.0}
        return {"Omega_m": dict(p), "sigma_8": dict(p),
                "joint": {"expected_kl": kl, "expected_kl_lo": kl - 0.01, "expected_kl_hi": kl + 0.01,
                          "hpd_coverage_error": hpd, "exact_hpd_coverage_error": 0.003}}

    res = {"grf_heads_flow": entry(0.99, 1.0, 0.04, 0.01), "grf_heads_flow_ensemble": entry(0.97, 1.0, 0.2, 0.05),
           "grf_heads_bnn": entry(0.9, 1.3, 2.0, 0.1), "grf_heads_diagonal": entry(0.96, 1.02, 2.3, 0.1),
           "grf_heads_fullcov": entry(0.965, 1.0, 0.9, 0.07), "grf_heads_fullcov_views_12min": entry(0.975, 1.0, 0.6, 0.03)}
    rows = pl.heads_table(res)
    row = {r.split(" | ")[0].strip("| "): r for r in rows[2:]}
    assert row["flow"].count("✓") == 4 and "✗" not in row["flow"]  # KL, 2 x efficiency, HPD
    assert row["flow ensemble (no TTA)"].count("✗") == 4
    assert "1.300 ✗ / 1.300 ✗" in row["BNN (mean-field head, diagonal Gaussian)"]
    assert "✓" not in row["diagonal Gaussian (grf_fisher)"] and "✗" not in row["diagonal Gaussian (grf_fisher)"]
    # the full-covariance heads: efficiency >= 0.97 only (0.965 misses, 0.975 meets); no flow marks
    assert "0.965 ✗ / 0.965 ✗" in row["full covariance, β = 0.5"] and row["full covariance, β = 0.5"].count("✗") == 2
    fc = row["full covariance on the view-averaged features of the 12-minute backbone"]
    assert fc.count("✓") == 2 and "✗" not in fc
    assert rows[1].count("|") == rows[2].count("|") and row["exact posterior"].startswith("| exact posterior")
    assert [r.split(" | ")[0].strip("| ") for r in rows[2:-1]] == [
        "diagonal Gaussian (grf_fisher)", "full covariance, β = 0.5", "flow", "flow ensemble (no TTA)",
        "full covariance on the view-averaged features of the 12-minute backbone",
        "BNN (mean-field head, diagonal Gaussian)"]


def test_interval_figures_bracket_a_calibrated_predictive_and_catch_a_narrow_one():
    """Gaussian predictives, 15 maps per simulation sharing parameters: calibrated by construction, the
    coverage error's interval reaches down to the DKW scale of the simulations; twice too narrow, the
    whole interval lies far above it. The RMSE interval brackets the figure and narrows with more
    simulations."""
    from types import SimpleNamespace

    from cosmoinfer.calibration.metrics import coverage_tolerance
    from cosmoinfer.posterior import Bijection, MixturePredictive

    rng = np.random.default_rng(3)

    def draw(n_sims, width=1.0, per=15):
        std = np.repeat(rng.uniform(0.05, 0.2, size=(n_sims, 2)), per, axis=0)
        mean = np.repeat(rng.uniform(0.3, 0.7, size=(n_sims, 2)), per, axis=0)
        truth = mean + std * rng.standard_normal(mean.shape)
        q = MixturePredictive.from_gaussians(mean[:, None], (width * std[:, None]) ** 2, Bijection.identity(2),
                                             ["a", "b"])
        return SimpleNamespace(truth=truth, mean=mean, predictive=q, sim_id=np.repeat(np.arange(n_sims), per))

    good = pl.interval_figures(draw(500), n_boot=300)
    narrow = pl.interval_figures(draw(500, width=0.5), n_boot=300)
    tol = coverage_tolerance(500)  # DKW at the number of simulations: maps within one are not independent
    assert np.all(good["coverage_error_lo"] <= good["coverage_error"])
    assert np.all(good["coverage_error"] <= good["coverage_error_hi"]) and np.all(good["coverage_error_lo"] < tol)
    assert np.all(narrow["coverage_error_lo"] > 3 * tol)  # half-width 90% intervals cover 59%: error ~0.3
    assert np.all(good["rmse_lo"] < good["rmse"]) and np.all(good["rmse"] < good["rmse_hi"])
    few = pl.interval_figures(draw(40), n_boot=300)
    assert np.all(few["rmse_hi"] - few["rmse_lo"] > 2 * (good["rmse_hi"] - good["rmse_lo"]))


def test_oracle_gaussian_kl_is_zero_when_the_exact_posterior_is_that_gaussian_and_positive_otherwise():
    from types import SimpleNamespace

    from scipy import stats

    from pipelines.physical_limit.summaries import oracle_gaussian_kl

    rng = np.random.default_rng(4)
    n = 300
    mean = rng.uniform(0.3, 0.7, size=(n, 2))
    a = rng.uniform(0.01, 0.05, size=(n, 2))
    rho = rng.uniform(-0.95, 0.95, size=n)
    cov = np.stack([np.stack([a[:, 0] ** 2, rho * a[:, 0] * a[:, 1]], -1),
                    np.stack([rho * a[:, 0] * a[:, 1], a[:, 1] ** 2], -1)], 1)
    truth = np.array([rng.multivariate_normal(m, c) for m, c in zip(mean, cov)])
    logp = np.array([stats.multivariate_normal(m, c).logpdf(t) for m, c, t in zip(mean, cov, truth)])
    pred = SimpleNamespace(truth=truth, sim_id=np.arange(n),
                           extra={"exact_mean": mean, "exact_cov": cov, "exact_log_prob": logp})
    assert abs(oracle_gaussian_kl(pred)["expected_kl"]) < 1e-9
    # the exact posterior twice as narrow (same mean): KL(p || q) of q with 4x the covariance, per map
    # = 0.5 (tr(4^-1 I) - 2 + 2 ln 4) = 0.5 (0.5 - 2 + 2.77) = 0.636
    narrow = [stats.multivariate_normal(m, c / 4) for m, c in zip(mean, cov)]
    truth2 = np.array([d.rvs(random_state=rng) for d in narrow])
    pred2 = SimpleNamespace(truth=truth2, sim_id=np.arange(n), extra={
        "exact_mean": mean, "exact_cov": cov, "exact_log_prob": np.array([d.logpdf(t) for d, t in zip(narrow, truth2)])})
    kl = oracle_gaussian_kl(pred2)
    assert kl["expected_kl_lo"] < 0.5 * (0.5 - 2 + 2 * np.log(4)) < kl["expected_kl_hi"]


def test_write_json_keeps_the_baseline_figures_a_network_only_rerun_did_not_compute(tmp_path):
    """Only the network's stages ran: its figures replace the old ones, the PS baseline's stay; a run with
    baseline figures replaces them; other experiments are kept; nothing else of the old entry survives."""
    path = tmp_path / "pl.json"
    old = {"cross_suite_x": {"Omega_m": {"rmse": 0.03, "in_suite_rmse": 0.006, "baseline_rmse": 0.028},
                             "joint": {"hpd": 0.1, "baseline_hpd": 0.2}},
           "camels_like_mtot": {"Omega_m": {"rmse": 0.05, "baseline_rmse": 0.06}}}
    path.write_text(json.dumps(old))
    merged = pl.summaries.write_json(path, {"cross_suite_x": {"Omega_m": {"rmse": 0.022}, "joint": {"hpd": 0.05}}})
    assert merged["cross_suite_x"] == {"Omega_m": {"rmse": 0.022, "baseline_rmse": 0.028},
                                       "joint": {"hpd": 0.05, "baseline_hpd": 0.2}}
    assert merged["camels_like_mtot"] == old["camels_like_mtot"] and json.loads(path.read_text()) == merged
    merged = pl.summaries.write_json(path, {"cross_suite_x": {"Omega_m": {"rmse": 0.02, "baseline_rmse": 0.03}}})
    assert merged["cross_suite_x"] == {"Omega_m": {"rmse": 0.02, "baseline_rmse": 0.03}}
