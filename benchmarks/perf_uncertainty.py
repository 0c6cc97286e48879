"""Evaluation benchmarks through the public :class:`cosmoinfer.uncertainty.predictor.Predictor`.

``mc_dropout``: ``T = 100`` dropout passes of the default CMD CNN (dropout only in the head, so the
backbone runs once and the head ``T`` times) against one deterministic pass, beside the naive loop
of ``T`` full network passes.

``ensemble_evaluation``: one ``Predictor`` over ``M = 5`` checkpoints against ``M`` single-model
``Predictor`` evaluations of the same batches (members loaded once, in memory; reloads counted),
and a ``torch.func`` stacked (vmapped) forward of the five members for comparison.

Checkpoints are written exactly as training writes them (metadata from the real
``build_module``); the weights are untrained, which changes no cost.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from benchmarks.perf_common import (
    Context,
    fmt,
    interleave,
    paired,
    quiet,
    result,
    spread,
    train_cfg,
    write_cmd_set,
)


def _checkpoints(ctx: Context, grid: int, hidden: int, n: int) -> list[Path]:
    import torch

    from cosmoinfer.training.run import build_datamodule, build_module

    root = write_cmd_set(ctx.work / f"set_eval_{grid}", n_sims=20, grid=grid)
    out = ctx.scratch(f"ckpt_{grid}_{hidden}")
    cfg = train_cfg([f"data.root={root}", "data.suite=Bench", f"out_dir={out}", f"model.hidden={hidden}",
                     "data.split_fractions=[0.8,0.1,0.1]"])
    with quiet():
        dm = build_datamodule(cfg, out)
        dm.setup("fit")
    paths = []
    for i in range(n):
        torch.manual_seed(i)
        module = build_module(cfg, dm)
        path = out / f"member{i}.ckpt"
        torch.save({"cosmoinfer": module.meta, "state_dict": module.state_dict(), "epoch": 0}, path)
        paths.append(path)
    return paths


def _batches(n_maps: int, grid: int, batch: int):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_maps, 1, grid, grid, generator=g)
    y = torch.rand(n_maps, 2, generator=g)
    sim = torch.arange(n_maps) // 15
    return [(x[i:i + batch], y[i:i + batch], sim[i:i + batch]) for i in range(0, n_maps, batch)]


# ---------------------------------------------------------------------------------------- mc_dropout
def mc_dropout(ctx: Context) -> dict:
    import torch
    from torch import nn

    from cosmoinfer.uncertainty.predictor import Predictor

    if ctx.quick:
        grid, hidden, n_maps, batch, T, t_naive, reps = 16, 4, 32, 32, 100, 5, 1
    else:
        grid, hidden, n_maps, batch, T, t_naive, reps = 64, 16, 128, 128, 100, 5, 3
    path = _checkpoints(ctx, grid, hidden, 1)[0]
    batches = _batches(n_maps, grid, batch)
    with quiet():
        det = Predictor([path], mc_samples=0)
        mc = Predictor([path], mc_samples=T)
    model = mc.models[0]
    net, lik = model.network, model.likelihood
    head_only = bool(net.dropout_in_head_only)

    @torch.no_grad()
    def naive():  # the naive MC loop: every pass runs the whole network with dropout on
        net.eval()
        for m in net.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.train()
        for x, _, _ in batches:
            for _ in range(t_naive):
                lik.predict(net(x))
        net.eval()

    t = interleave({"det": lambda: det.predict_batches(batches), "mc": lambda: mc.predict_batches(batches),
                    "naive": naive}, reps)
    p = paired(t["mc"]["cpu"], t["det"]["cpu"])
    pw = paired(t["mc"]["wall"], t["det"]["wall"])
    naive_ratio = paired([c * T / t_naive for c in t["naive"]["cpu"]], t["det"]["cpu"])
    det_s, mc_s = float(np.median(t["det"]["cpu"])), float(np.median(t["mc"]["cpu"]))
    naive_s = float(np.median(t["naive"]["cpu"])) * T / t_naive
    post = mc.predict_batches(batches)
    spread_ok = bool(np.all(post.std_epistemic > 0))
    notes = [
        f"Model: default cmd_cnn (hidden={hidden}, dropout 0.2 in the two head layers only: "
        f"dropout_in_head_only={head_only}), maps {grid}^2, {n_maps} maps in batches of {batch}, T={T}, "
        f"{reps} interleaved rounds; CPU time, one thread.",
        f"Both timed calls are the public Predictor.predict_batches (mixture moments and unit conversion "
        f"included). The naive loop (whole network with dropout on, T times) was timed with T={t_naive} passes "
        f"and scaled by {T // t_naive} (each pass costs the same).",
        f"Every map gets a non-zero epistemic spread from the {T} passes: {spread_ok}.",
    ]
    return result(
        ratio=p["median"], target=1.5, direction="<=",
        figure=f"time(T={T} MC dropout) / time(one deterministic pass)",
        summary=[
            ["one deterministic pass (Predictor, mc_samples=0)", f"{fmt(1e3 * det_s / n_maps)} ms/map", "", ""],
            [f"MC dropout, T={T}, backbone once + head T times", f"{fmt(1e3 * mc_s / n_maps)} ms/map", "", ""],
            [f"**ratio MC (T={T}) / deterministic** (CPU), median (min-max)", spread(p), "<= 1.5",
             fmt(p["median"] <= 1.5)],
            ["same ratio, wall clock", spread(pw), "", ""],
            [f"naive loop, T={T} full passes / deterministic", f"{fmt(naive_ratio['median'])} "
             f"({fmt(1e3 * naive_s / n_maps)} ms/map)", "", ""],
        ],
        notes=notes,
        details={"det_cpu_s": t["det"]["cpu"], "mc_cpu_s": t["mc"]["cpu"], "naive_cpu_s_per_pass":
                 [c / t_naive for c in t["naive"]["cpu"]], "T": T, "n_maps": n_maps, "grid": grid, "hidden": hidden,
                 "dropout_in_head_only": head_only},
    )


# ---------------------------------------------------------------------------------------- ensemble_evaluation
def _stacked_forward(models):
    """``torch.func`` twin of the members' forward: one vmapped call over stacked weights.

    Returns ``fn(x) -> list of M predict dicts`` or ``None`` where ``torch.func`` cannot do it.
    """
    import torch

    try:
        from torch.func import functional_call, stack_module_state, vmap
    except ImportError:
        return None
    nets = [m.network.eval() for m in models]
    params, buffers = stack_module_state(nets)
    base = copy.deepcopy(nets[0]).to("meta")
    lik = models[0].likelihood

    def one(p, b, x):
        return functional_call(base, (p, b), (x,))

    batched = vmap(one, in_dims=(0, 0, None))

    @torch.no_grad()
    def fn(x):
        raw = batched(params, buffers, x)  # (M, B, n_outputs)
        return [lik.predict(r) for r in raw]

    return fn


def ensemble_evaluation(ctx: Context) -> dict:
    import time

    import torch

    import cosmoinfer.uncertainty.predictor as predictor_mod
    from cosmoinfer.training.checkpoint import load_checkpoint
    from cosmoinfer.uncertainty.predictor import Predictor

    if ctx.quick:
        grid, hidden, n_maps, batch, M, reps = 16, 4, 32, 32, 5, 1
    else:
        grid, hidden, n_maps, batch, M, reps = 64, 16, 32, 32, 5, 7  # short rounds, many: CPU time is noisy too
    paths = _checkpoints(ctx, grid, hidden, M)
    batches = _batches(n_maps, grid, batch)

    loads = {"n": 0}
    real_load = predictor_mod.load_checkpoint

    def counting_load(path):
        loads["n"] += 1
        return real_load(path)

    predictor_mod.load_checkpoint = counting_load
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        with quiet():
            ens = Predictor(paths)
        load_cpu, load_wall = time.process_time() - c0, time.perf_counter() - t0
        loads_at_init = loads["n"]
        with quiet():
            singles = [Predictor([p]) for p in paths]
        loads["n"] = 0
        stacked = None
        try:
            stacked = _stacked_forward(ens.models)
            if stacked is not None:
                stacked(batches[0][0])
        except Exception as err:  # noqa: BLE001 - torch.func cannot batch every module; say so and go on
            ctx.log(f"  torch.func stacking unavailable: {type(err).__name__}: {err}")
            stacked = None

        @torch.no_grad()
        def loop_forward():  # the members one after the other, same work as stacked (no mixture step)
            for x, _, _ in batches:
                for m in ens.models:
                    m.likelihood.predict(m.network.eval()(x))

        fns = {"ensemble": lambda: ens.predict_batches(batches),
               "singles": lambda: [s.predict_batches(batches) for s in singles]}
        if stacked is not None:
            fns["loop_forward"] = loop_forward
            fns["stacked_forward"] = lambda: [stacked(x) for x, _, _ in batches]
        t = interleave(fns, reps)
        reloads = loads["n"]
    finally:
        predictor_mod.load_checkpoint = real_load
    p = paired(t["ensemble"]["cpu"], t["singles"]["cpu"])
    pw = paired(t["ensemble"]["wall"], t["singles"]["wall"])
    ens_s, single_s = float(np.median(t["ensemble"]["cpu"])), float(np.median(t["singles"]["cpu"])) / M
    c0 = time.process_time()
    load_checkpoint(paths[0])
    one_load = time.process_time() - c0
    summary = [
        ["one member (Predictor over 1 checkpoint)", f"{fmt(1e3 * single_s / n_maps)} ms/map", "", ""],
        [f"ensemble of M={M} (one Predictor)", f"{fmt(1e3 * ens_s / n_maps)} ms/map", "", ""],
        ["**ratio ensemble / (M x single)** (CPU), median (min-max)", spread(p), "<= 1.1", fmt(p["median"] <= 1.1)],
        ["same ratio, wall clock", spread(pw), "", ""],
        ["checkpoint loads: at construction / during all timed evaluations", f"{loads_at_init} / {reloads}",
         f"{M} / 0", fmt(loads_at_init == M and reloads == 0)],
        [f"loading the {M} members once", f"{fmt(load_cpu)} s CPU ({fmt(load_wall)} s wall)", "", ""],
        ["if every member were reloaded for every batch (Lightning-UQ-Box style)",
         f"+{fmt(M * one_load)} s per batch, x{fmt((ens_s + M * one_load * len(batches)) / ens_s)} the ensemble's "
         f"time here", "", ""],
    ]
    notes = [f"Model: default cmd_cnn (hidden={hidden}), maps {grid}^2, {n_maps} maps in batches of {batch}, "
             f"{reps} interleaved rounds; CPU time, one thread. Same batches for both sides; both include "
             "the mixture moments and the conversion to physical units."]
    stack_ratio = None
    if stacked is not None:
        stack_ratio = paired(t["stacked_forward"]["cpu"], t["loop_forward"]["cpu"])
        summary.append(["torch.func stacked forward (vmap over the 5 members) / members one by one",
                        spread(stack_ratio), "", ""])
        if stack_ratio["median"] < 0.9:
            notes.append("torch.func stacking is faster here: worth adopting in Predictor._member_batch for "
                         "ensembles of identical architectures (cosmoinfer/uncertainty is owned elsewhere, so it "
                         "is not changed by this benchmark).")
        else:
            notes.append(f"torch.func stacking does not help on the CPU (x{fmt(stack_ratio['median'])} the time of "
                         "the members one by one): vmap turns each convolution into a grouped convolution over the "
                         "members, which the CPU kernels run slower than the members' own convolutions back to "
                         "back; the members are already evaluated one after the other on weights held in memory, "
                         "so there is no reload or dispatch overhead left for it to save. Predictor is left as it "
                         "is.")
    else:
        summary.append(["torch.func stacked forward", "not available for this model/torch", "", ""])
    return result(
        ratio=p["median"], target=1.1, direction="<=",
        figure=f"time(ensemble of {M}) / ({M} x time(one member))",
        summary=summary, notes=notes,
        details={"ensemble_cpu_s": t["ensemble"]["cpu"], "singles_cpu_s": t["singles"]["cpu"], "M": M,
                 "loads_at_init": loads_at_init, "reloads_during_eval": reloads, "load_cpu_s": load_cpu,
                 "stacked_vs_loop": stack_ratio},
    )
