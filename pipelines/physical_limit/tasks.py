"""The benchmark's stages: every simulate, train and evaluate run, as :class:`cosmoinfer.stages.Stage`.

Each stage is the real console script (``python -m cosmoinfer.cli.<simulate|train|evaluate>``)
writing into its own folder under ``--out``; its fingerprint is the composed Hydra configuration
(``conf/<simulate|train|evaluate>.yaml`` with the stage's overrides) and the fingerprints of the
stages it reads, so :class:`~cosmoinfer.stages.StageRunner` reuses a stage only when neither changed.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from cosmoinfer.errors import InputError
from cosmoinfer.stages import Stage, compose_stage_config
from pipelines.physical_limit.scales import REPO

PARTS = ("grf", "heads", "camels", "cross", "sweep")
QUIET = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]
#: evaluate's test-time augmentation: every CNN prediction averaged over the 8 rotations/flips of the map
TTA = ["tta=true"]
MULTI_PARAMS = "[Omega_m,sigma_8,A_SN1,A_AGN1]"
MULTI_FIELDS = ("Mtot", "Mgas", "T", "Mstar")
#: the heads part's predictions, in table order
HEADS_ORDER = ("diagonal", "fullcov", "mdn", "flow", "flow_ensemble", "flow_on_diagonal", "flow_views", "diagonal_12min",
               "flow_views_12min", "fullcov_views_12min", "diagonal_20min", "flow_views_20min", "bnn", "bnn_views_12min", "ps_flow",
               "ps_flow_ensemble", "sbi_ps", "sbi_cnn")
#: cross-suite experiments: JSON key suffix -> (CNN, PS baseline or None), camels models trained on SynthTNG
CROSS = {"": ("mtot_cnn", "mtot_ps"), "_Mgas": ("single_Mgas_cnn", None),
         "_multifield": ("multifield_cnn", "multifield_ps")}
CROSS_MODELS = tuple(m for pair in CROSS.values() for m in pair if m)
#: files each kind of stage leaves in its folder (glob patterns); a stage missing one is redone
OUTPUTS = {"simulate": ("Maps_*.npy",), "train": ("checkpoints/best.ckpt",), "evaluate": ("predictions.h5",)}


def ps_overrides(grid: int, positive: bool) -> list[str]:
    """The power-spectrum baseline in place of the CNN: linear |k| bins to the grid corner, a 128-unit MLP.

    The bins run to the grid corner (``model.k_max=corner``), so the baseline sees every mode the
    CNN sees: the ~21% of modes beyond Nyquist carry a good part of the amplitude information (on
    the grf_fisher maps an MLP on Nyquist-limited bins reached efficiency ~0.88, with the corner
    bins ~0.94, from the same 21 000 maps). Positive fields (camels_like) also give the baseline
    the log map mean (``model.include_mean=true``), which the overdensity spectra drop: a Mtot
    map's mean is ``rho_crit Omega_m L_s`` times the slab density, a near-direct Omega_m measurement
    that the CNN sees, so without it the CNN-vs-PS gap would be mostly the mean.
    """
    out = ["model=ps_mlp", f"model.n_bins={min(32, grid // 2)}", "model.hidden=128", "model.k_max=corner"]
    if positive:
        out.append("model.include_mean=true")
    else:  # GRF delta maps: spectrum of M - mean(M), not of M / mean(M) - 1
        out.append("model.overdensity=false")
    return out


# --------------------------------------------------------------------------- one stage of each kind


def _list(xs) -> str:
    return "[" + ",".join(str(x) for x in xs) + "]"


def _stage(name: str, cli: str, args: list[str], folder: Path, out: Path, inputs=()) -> Stage:
    """``python -m cosmoinfer.cli.<cli> args`` into ``folder``, composed from ``conf/<cli>.yaml``."""
    return Stage(name=name, module=f"cosmoinfer.cli.{cli}", config_name=cli,
                 args=[*args, f"hydra.run.dir={out / '.hydra_runs' / name.replace(' ', '_')}"],
                 folder=folder,
                 log_file=out / "logs" / f"{name.replace(' ', '_').replace('/', '_')}.log", out=out,
                 inputs=list(inputs), resumable=cli == "train", outputs=OUTPUTS[cli], cwd=REPO)


def simulate_task(name: str, folder: Path, out: Path, simulator: str, n_sims: int, grid: int, suites,
                  fields, extra=(), seed: int = 0) -> Stage:
    args = [f"simulator={simulator}", f"n_sims={n_sims}", f"grid={grid}", f"seed={seed}",
            f"suites={_list(suites)}", f"fields={_list(fields)}", "progress=false", f"out_dir={folder}",
            *extra]
    return _stage(name, "simulate", args, folder, out)


def train_task(name: str, folder: Path, out: Path, experiment: str, data: Stage, seed: int,
               overrides, after=()) -> Stage:
    """Train ``experiment`` on the maps ``data`` simulated (``resume=true``: an interrupted run continues).

    ``after``: training stages this one reads (a ``transfer.checkpoint``), run first.
    """
    args = [f"experiment={experiment}", f"seed={seed}", f"out_dir={folder}", "resume=true",
            f"data.root={data.folder}", *QUIET, *overrides]
    return _stage(name, "train", args, folder, out, [data, *after])


def _from_heads(overrides, trains: dict) -> tuple[list[str], list[Stage]]:
    """Resolve ``key=@head`` overrides to that head's best checkpoint; returns the overrides and those stages."""
    resolved, after = [], []
    for o in overrides:
        key, sep, value = str(o).partition("=")
        if sep and value.startswith("@"):
            src = trains.get(value[1:])
            if src is None:
                raise KeyError(f"heads: {o!r} names no head listed before it ({', '.join(trains)})")
            resolved.append(f"{key}={_ckpt(src)}")
            after.append(src)
        else:
            resolved.append(o)
    return resolved, after


def eval_task(name: str, folder: Path, out: Path, models: list[Stage], split: str, extra=(),
              data=(), method: str | None = None) -> Stage:
    """Evaluate the best checkpoints of the training stages ``models`` (one: single, more: ensemble).

    ``data``: the simulate stages whose maps ``extra`` points ``data.root`` at, if not the training data;
    ``method``: the evaluator, if not single / ensemble (``bnn``).
    """
    method = method or ("single" if len(models) == 1 else "ensemble")
    args = [f"evaluator={method}", f"checkpoints={_list(_ckpt(m) for m in models)}", f"split={split}",
            f"out_dir={folder}", *extra]
    return _stage(name, "evaluate", args, folder, out, [*models, *data])


def _tta(model_name: str, overrides=()) -> list[str]:
    """Test-time augmentation for the CNNs; none for the power-spectrum baselines, nor for a network trained
    with ``overrides`` that average its features over the views (both invariant already)."""
    return TTA if model_name.endswith("cnn") and "model.view_average=true" not in overrides else []


def _ckpt(member: Stage) -> str:
    return str(member.folder / "checkpoints" / "best.ckpt")


# --------------------------------------------------------------------------- the parts


def grf_tasks(out: Path, sc: dict) -> list[Stage]:
    g = sc["grf"]
    root = out / "grf"
    split = [f"data.split_fractions={g['split']}"] if g["split"] else []
    sim = simulate_task("grf simulate", root / "data", out, "grf", g["n_sims"], g["grid"], ["GRF"], ["delta"])
    # the calibration set: fresh simulations (seed 1), every map fits the recalibrations
    calib = simulate_task("grf simulate calib", root / "calib_data", out, "grf", g["calib_sims"], g["grid"],
                          ["GRF"], ["delta"], seed=1)
    members = [train_task(f"grf train cnn {i}", root / "cnn" / "members" / str(i), out, "grf_fisher", sim, i,
                          [*split, *(g["cnn"] if i == 0 else g["member"])]) for i in range(int(g["members"]))]
    # the PS baseline keeps the plain NLL (its best recipe): with grf_fisher's beta-NLL it reached
    # 0.943 / 0.922 efficiency (widths 1.19 / 1.14) against 0.950 / 0.967 (1.01 / 1.02)
    ps = train_task("grf train ps", root / "ps" / "members" / "0", out, "grf_fisher", sim, 0,
                    [*split, *ps_overrides(g["grid"], positive=False), "~model.pool", "~model.activation",
                     "loss.beta=0.0", *g["ps"]])
    tasks = [sim, calib, *members, ps]
    exact = [f"exact_grid={g['exact_grid']}"]
    models = {"cnn_single": ([members[0]], TTA), "cnn_single_no_tta": ([members[0]], []), "ps": ([ps], [])}
    if len(members) > 1:
        models["cnn_ensemble"] = (members, TTA)
    for label, (ms, tta) in models.items():
        for split_name in ("val", "test"):
            tasks.append(eval_task(f"grf evaluate {label} {split_name}",
                                   root / "predictions" / label / split_name, out, ms, split_name,
                                   [*exact, *tta]))
        tasks.append(eval_task(f"grf evaluate {label} calib", root / "predictions" / label / "calib", out, ms,
                               "all", [f"data.root={calib.folder}", *exact, *tta], data=[calib]))
    return tasks


def heads_tasks(out: Path, sc: dict) -> list[Stage]:
    """Head by head on grf maps: every likelihood head, a flow ensemble, a BNN, and sbi's NPE as a peer.

    Its own maps (``heads.seed``, fresh simulations), split ``heads.split``; every network trains
    under the same wall-clock budget (``trainer.max_time=heads.budget``) on the ``grf_fisher``
    preset with the head's overrides, and is evaluated on the test maps with the exact posterior
    (TTA for the CNNs; ``ps_*`` heads sit on the power-spectrum backbone). ``heads.ensembles`` maps a head to
    a member count: ``<head>_ensemble`` mixes the ``<head>`` network with that many minus one more networks of
    the same overrides (seeds 1, 2 ...; folders ``<head>_1`` ...); ``bnn`` is evaluated by ``evaluator=bnn``. The sbi peers
    (:mod:`pipelines.physical_limit.sbi_npe`, optional: ``pip install -e '.[bench]'``) train on the
    same training maps with the same budget and write the same ``predictions.h5``.
    """
    h = sc["heads"]
    root = out / "heads"
    sim = simulate_task("heads simulate", root / "data", out, "grf", h["n_sims"], h["grid"], ["GRF"], ["delta"],
                        seed=int(h["seed"]))
    common = [f"data.split_fractions={h['split']}", f"trainer.max_time={h['budget']}", *h["common"]]
    tasks, evals, peers = [sim], [], []
    trains = {}
    for head, over in h["heads"].items():
        over, after = _from_heads(over, trains)  # e.g. transfer.checkpoint=@diagonal
        trains[head] = train_task(f"heads train {head}", root / "models" / head, out, "grf_fisher", sim, 0,
                                  [*common, *over], after)
    ensembles = {}
    for head, n in (h.get("ensembles") or {}).items():
        if head not in trains:
            raise InputError("heads.ensembles", f"{head!r} is not a head of heads.heads ({', '.join(trains)})")
        if int(n) < 2:
            continue
        over, after = _from_heads(h["heads"][head], trains)
        ensembles[f"{head}_ensemble"] = [trains[head], *(
            train_task(f"heads train {head} {i}", root / "models" / f"{head}_{i}", out, "grf_fisher", sim, i,
                       [*common, *over], after) for i in range(1, int(n)))]
    tasks += [*trains.values(), *(m for ms in ensembles.values() for m in ms[1:])]
    exact = [f"exact_grid={h['exact_grid']}", *h.get("evaluate", [])]
    models = {**{head: [t] for head, t in trains.items()}, **ensembles}
    for label, ms in models.items():
        # no TTA for a binned power spectrum (invariant already), nor for an ensemble: its M members x 8
        # views would make a mixture of 8 M flows, whose evaluation (every draw's density under every
        # component) took ~8 min for one flow's 8 views on 7 650 maps; it mixes its M members' single views
        tta = [] if label.startswith("ps_") or label in ensembles else TTA
        evals.append(eval_task(f"heads evaluate {label}", root / "predictions" / label, out, ms, "test",
                               [*exact, *tta], method="bnn" if label.startswith("bnn") else None))
    for emb in h.get("sbi", []):
        peers.append(sbi_task(f"heads sbi {emb}", root / "predictions" / f"sbi_{emb}", out, sim, emb, h))
    # in this order (the runner starts stages in list order): every timed training, sbi's included,
    # runs before the evaluations, which are not timed
    return [*tasks, *peers, *evals]


def sbi_task(name: str, folder: Path, out: Path, data: Stage, embedding: str, h: dict) -> Stage:
    """sbi's NPE on ``data``'s training maps (:mod:`pipelines.physical_limit.sbi_npe`), scored on its test maps.

    Fingerprinted by the ``evaluate`` config of the same data, split and exact grid, plus the NPE's
    own arguments (carried as ``+sbi.*`` keys, which cosmoinfer never reads).
    """
    budget_min = _minutes(h["budget"])
    npe = [f"--data={data.folder}", f"--out={folder}", f"--embedding={embedding}", f"--budget-min={budget_min}",
           "--seed=0", f"--split-fractions={h['split'].strip('[]')}", f"--exact-grid={h['exact_grid']}"]
    fp = [f"data.root={data.folder}", f"data.split_fractions={h['split']}", f"exact_grid={h['exact_grid']}",
          f"+sbi.embedding={embedding}", f"+sbi.budget_min={budget_min}"]
    st = _stage(name, "evaluate", fp, folder, out, [data])
    st.module, st.args = "pipelines.physical_limit.sbi_npe", npe
    st._config = compose_stage_config("evaluate", fp, out)
    st.resumable = False
    return st


def _minutes(hms: str) -> float:
    """``"DD:HH:MM:SS"`` (Lightning's ``trainer.max_time``) in minutes."""
    d, hh, mm, ss = (int(x) for x in str(hms).split(":"))
    return ((d * 24 + hh) * 60 + mm) + ss / 60


def _camels_models(out: Path, c: dict) -> dict:
    """name -> (experiment, overrides) of every camels model."""
    split = [f"data.split_fractions={c['split']}"] if c["split"] else []
    models = {
        "mtot_cnn": ("camels_like_mtot", [*split, *c["cnn"]]),
        "mtot_ps": ("camels_like_mtot", [*split, *ps_overrides(c["grid"], True), *c["ps"]]),
        "multifield_cnn": ("camels_like_multifield", [*split, *c["cnn"]]),
        # the baselines keep the plain NLL (as on grf), the multifield CNNs the preset's beta-NLL
        "multifield_ps": ("camels_like_multifield", [*split, *ps_overrides(c["grid"], True), "loss.beta=0.0",
                                                     *c["ps"]]),
    }
    for f in MULTI_FIELDS:
        models[f"single_{f}_cnn"] = ("camels_like_multifield", [*split, f"data.fields=[{f}]", *c["cnn"]])
    return models


def camels_tasks(out: Path, sc: dict, cross_only: bool = False) -> list[Stage]:
    """The camels models, each evaluated in-suite (``cross_only``: only the cross-suite part's models).

    With ``camels.test_sims`` / ``calib_sims`` set, every model is judged on ``test_sims`` fresh
    SynthTNG simulations (seed 1, all their maps: ``predictions/<model>/test``) and its recalibrations
    are fitted on ``calib_sims`` more (seed 2: ``predictions/<model>/calib``), as the grf part does; the
    training data's own split then needs no test share. Without them: the training data's val and
    test splits (``predictions/<model>/{val,test}``).
    """
    c = sc["camels"]
    root = out / "camels"
    sim = simulate_task("camels simulate", root / "data", out, "camels_like", c["n_sims"], c["grid"],
                        ["SynthTNG", "SynthSIMBA"], list(MULTI_FIELDS))
    tasks = [sim]
    fresh = {}
    for key, seed in (("test", 1), ("calib", 2)):
        if c.get(f"{key}_sims"):
            fresh[key] = simulate_task(f"camels simulate {key}", root / f"{key}_data", out, "camels_like",
                                       c[f"{key}_sims"], c["grid"], ["SynthTNG"], list(MULTI_FIELDS), seed=seed)
            tasks.append(fresh[key])
    models = _camels_models(out, c)
    if cross_only:
        models = {k: v for k, v in models.items() if k in CROSS_MODELS}
    for name, (exp, over) in models.items():
        train = train_task(f"camels train {name}", root / "models" / name, out, exp, sim, 0, over)
        tasks.append(train)
        head = preset_head(exp) if name.endswith("cnn") else []
        tta = _tta(name, head)
        if head:  # the preset's second stage (pipeline.head): a new head on the frozen backbone, evaluated instead
            train = train_task(f"camels train {name} head", root / "models" / f"{name}_head", out, exp, sim, 0,
                               [*over, f"transfer.checkpoint={_ckpt(train)}", *head], after=[train])
            tasks.append(train)
        for split_name in ("test", "calib") if fresh else ("val", "test"):
            if split_name in fresh:
                extra, data = [f"data.root={fresh[split_name].folder}", "data.suite=SynthTNG"], [fresh[split_name]]
                split = "all"
            else:
                extra, data, split = [], [], split_name
            tasks.append(eval_task(f"camels evaluate {name} {split_name}", root / "predictions" / name / split_name,
                                   out, [train], split, [*extra, *tta], data=data))
    return tasks


def preset_head(experiment: str) -> list[str]:
    """The ``pipeline.head`` overrides of ``conf/experiment/<experiment>.yaml`` ([] if none): what its pipeline evaluates."""
    cfg = compose_stage_config("pipeline", [f"experiment={experiment}", "out_dir=x"], REPO)
    return [str(o) for o in (cfg["pipeline"].get("head") or [])]


def cross_tasks(out: Path, sc: dict) -> list[Stage]:
    """Train on SynthTNG (the camels models of ``CROSS``), evaluate on all SynthSIMBA maps.

    The in-suite predictions (for contrast, and the recalibration fit) are the camels part's own.
    """
    tasks = camels_tasks(out, sc, cross_only=True)
    sim, trains = tasks[0], {t.name: t for t in tasks}
    for name in CROSS_MODELS:
        train = trains.get(f"camels train {name} head") or trains[f"camels train {name}"]
        tta = _tta(name, train.args)
        foreign = [f"data.root={sim.folder}", "data.suite=SynthSIMBA", *tta]
        tasks.append(eval_task(f"cross evaluate {name} SynthSIMBA", out / "cross" / "predictions" / name, out,
                               [train], "all", foreign, data=[sim]))
    return tasks


def sweep_tasks(out: Path, sc: dict) -> list[Stage]:
    s = sc["sweep"]
    split = [f"data.split_fractions={s['split']}"] if s["split"] else []
    tasks = []
    for v in s["values"]:
        tag = f"{s['knob']}_{v}"
        root = out / "sweep" / tag
        sim = simulate_task(f"sweep simulate {tag}", root / "data", out, "camels_like", s["n_sims"],
                            s["grid"], ["SynthTNG"], ["Mtot"], [f"simulator.{s['knob']}={v}"])
        tasks.append(sim)
        for name, over in (("cnn", s["cnn"]), ("ps", [*ps_overrides(s["grid"], True), *s["ps"]])):
            train = train_task(f"sweep train {name} {tag}", root / "models" / name, out, "camels_like_mtot",
                               sim, 0, [*split, *over])
            tasks.append(train)
            for split_name in ("val", "test"):
                tasks.append(eval_task(f"sweep evaluate {name} {tag} {split_name}",
                                       root / "predictions" / name / split_name, out, [train], split_name,
                                       _tta(name)))
    return tasks


def all_tasks(out: Path, sc: dict, parts, threads: int = 1) -> list[Stage]:
    """The stages of ``parts``, each once (a stage two parts share, e.g. a camels model, is one stage).

    Every stage runs in the repository with ``threads`` torch/BLAS threads and unbuffered output.
    """
    tasks: dict[str, Stage] = {}
    builders = {"grf": grf_tasks, "heads": heads_tasks, "camels": camels_tasks, "cross": cross_tasks, "sweep": sweep_tasks}
    for p in parts:
        for t in builders[p](out, sc):
            tasks.setdefault(t.name, t)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    for t in tasks.values():
        t.inputs = [tasks.get(i.name, i) for i in t.inputs]  # the kept copy of a stage built twice
        t.env = dict(env)
    return list(tasks.values())


def select_stages(tasks: list[Stage], patterns: list[str]) -> list[Stage]:
    """The stages whose name matches one of the shell-style ``patterns``, with every stage they read.

    ``"heads * diagonal"`` keeps ``heads train diagonal`` and ``heads evaluate diagonal`` (and the
    simulation they read); a pattern that matches no stage is an error naming the stages.
    """
    keep: dict[str, Stage] = {}

    def add(t: Stage) -> None:
        if t.name not in keep:
            keep[t.name] = t
            for i in t.inputs:
                add(i)

    for pat in patterns:
        hits = [t for t in tasks if fnmatch.fnmatchcase(t.name, pat)]
        if not hits:
            raise InputError("--stages", f"{pat!r} matches no stage; the stages are: {'; '.join(t.name for t in tasks)}")
        for t in hits:
            add(t)
    return [t for t in tasks if t.name in keep]  # in the runner's order
