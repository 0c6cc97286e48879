"""Run the performance benchmarks and write their figures.

    python -m benchmarks.run                     # all, full size (make bench): ~15 min on 2 shared cores
    python -m benchmarks.run --quick             # smoke run, tiny sizes (make bench-quick)
    python -m benchmarks.run --only simulator exact_posterior
    python -m benchmarks.run --gpu               # also the GPU benchmark (skipped cleanly without CUDA)

Full runs write ``benchmarks/results/performance.json`` and the performance part of
``benchmarks/RESULTS.md`` (the section "## Physical limit (statistical benchmark)" and what
follows it are kept as they are). ``--quick`` writes to a temporary folder unless ``--out`` is
given, so a smoke run never overwrites the recorded figures. ``--out DIR`` writes both files into
``DIR``. With ``--only``, the other benchmarks' entries already in the JSON are kept.

JSON: ``{benchmark: {"ratio": r, "target": t, "direction": ">=" | "<=" | "~", "met": bool, ...}}``
where ``ratio`` is the figure the target is stated for.

Threads: numpy/BLAS and torch run with ``--threads`` (default 1) intra-op threads. On a machine
whose cores are shared with other jobs, two OpenMP threads per process make each step 10-50x
slower whenever the other core is busy (threads spin at barriers), which no ratio survives.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

NAMES = ["training_overhead", "data_pipeline", "mc_dropout", "ensemble_evaluation", "simulator",
         "exact_posterior", "scaling", "gpu"]
TITLES = {
    "training_overhead": "1. Training overhead",
    "data_pipeline": "2. Data pipeline",
    "mc_dropout": "3. MC dropout",
    "ensemble_evaluation": "4. Ensemble evaluation",
    "simulator": "5. Simulator",
    "exact_posterior": "6. Exact posterior",
    "scaling": "7. Scaling",
    "gpu": "8. GPU",
}
FUNCTIONS = {
    "training_overhead": ("benchmarks.perf_training", "training_overhead"),
    "data_pipeline": ("benchmarks.perf_data", "data_pipeline"),
    "mc_dropout": ("benchmarks.perf_uncertainty", "mc_dropout"),
    "ensemble_evaluation": ("benchmarks.perf_uncertainty", "ensemble_evaluation"),
    "simulator": ("benchmarks.perf_simulator", "simulator"),
    "exact_posterior": ("benchmarks.perf_exact", "exact_posterior"),
    "scaling": ("benchmarks.perf_training", "scaling"),
    "gpu": ("benchmarks.perf_gpu", "gpu"),
}
ORDER = ["simulator", "exact_posterior", "training_overhead", "mc_dropout", "ensemble_evaluation", "scaling",
         "data_pipeline", "gpu"]  # run order: the long on-disk memory run last

PHYSICAL_HEADING = "## Physical limit (statistical benchmark)"
PHYSICAL_PLACEHOLDER = f"""{PHYSICAL_HEADING}

_Placeholder: this section belongs to the statistical benchmark (networks against the exact GRF
posterior) and is written by its own engineer/run; `python -m benchmarks.run` never changes it._
"""

OPTIMISATIONS = """### Optimisations the figures called for

- **CMD reader without memory-mapped reads** (`src/cosmoinfer/data/sources.py`): `CMDSource` still opens
  the `.npy` files with `np.load(mmap_mode="r")` (header, shape, data offset) but reads maps with
  `os.preadv` at that offset. Pages read through a memory map stay mapped and count towards the
  resident set of the reader and of every DataLoader worker, so one epoch over a 4 GB file made
  each of them ~4 GB resident (`data_pipeline` measures this "mmap baseline" beside the fix);
  through `pread` the data passes through the page cache, which is not charged to the process.
- **Normalisation fit in byte-bounded blocks** (`src/cosmoinfer/data/transforms.py`): `fit_normalizer`
  streamed 256 maps per block whatever their size; at 256^2 its float64 copies and temporaries
  peaked at ~0.5 GB. Blocks are now capped at ~32 MB of float64 (64 maps at 256^2), same result.
- **Simulator filters on distinct |k|** (`src/cosmoinfer/simulators/camels_like.py`): the Gaussian
  amplitude, the feedback suppression and the field variances depend on |k| only, so they are
  evaluated on the ~3k distinct |k| of a 64^3 grid and gathered once, instead of on all 135k modes;
  in-place updates drop four box-sized temporaries. Maps are bit-for-bit unchanged (float32).
- **Exact posterior: grid terms computed once** (`src/cosmoinfer/simulators/exact.py`): the spectra on the
  parameter grid (an EH98 transfer function per grid Omega_m, projected over the slab) and `1/P` on
  the grid do not depend on the maps, yet took ~80% of a 512-map call at n_grid=128 and were
  recomputed on every call (`cosmoinfer-evaluate` calls once per 512-map block). They are cached on
  the simulator instance (last two grids); results are identical.
- **Cheaper non-finite weight check** (`src/cosmoinfer/training/callbacks.py`): `NonFiniteGuard` ran
  `isfinite(p).all()` on every parameter tensor after every step (~1 ms/step, one of the larger
  pieces of Lightning-side overhead in `training_overhead`); it now checks one fused
  `torch._foreach_norm` of all parameters (finite iff every entry is) and falls back to the
  per-tensor check only to name the offender.

Not changed, for their owners: `PosteriorModule.training_step` calls `self.log` twice per step,
which costs ~1.5 ms/step on the CPU (Lightning's result collection); logging the step loss only
every `trainer.log_every_n_steps` steps would remove most of the remaining Lightning overhead.
`torch.func` stacking of ensemble members was measured (`ensemble_evaluation`) and is slower on
the CPU, so `Predictor` needs no change for the ensemble target. `data.eval_batch_size: 256`
(`conf/data/cmd.yaml`) makes validation of the default cmd_cnn at the CMD map size 256^2 need
~8.6 GB of activations (see `data_pipeline`); it should follow the map size (e.g. default to
`data.batch_size`).
"""


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (tens of seconds)")
    ap.add_argument("--only", nargs="+", choices=NAMES, metavar="NAME", help=f"run only these: {', '.join(NAMES)}")
    ap.add_argument("--out", type=Path, default=None,
                    help="write performance.json and RESULTS.md into this folder (default: benchmarks/results "
                         "+ benchmarks/RESULTS.md for full runs, a temporary folder for --quick)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for numpy/BLAS/torch (default 1)")
    ap.add_argument("--gpu", action="store_true", help="run the GPU benchmark (needs CUDA; skipped cleanly without)")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch folder (data sets, checkpoints)")
    return ap.parse_args(argv)


def _outputs(args) -> tuple[Path, Path]:
    here = Path(__file__).resolve().parent
    if args.out is not None:
        return args.out / "performance.json", args.out / "RESULTS.md"
    if args.quick:
        d = Path(tempfile.gettempdir()) / "cosmoinfer-bench-quick"
        return d / "performance.json", d / "RESULTS.md"
    return here / "results" / "performance.json", here / "RESULTS.md"


# ---------------------------------------------------------------------------------------- markdown
def _table(columns: list[str], rows: list[list]) -> str:
    def cell(x) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _met_word(entry: dict) -> str:
    if entry.get("error"):
        return "error"
    m = entry.get("met")
    return "n/a" if m is None else ("**yes**" if m else "**no**")


def _target_text(entry: dict) -> str:
    t, d = entry.get("target"), entry.get("direction")
    if t is None:
        return "none stated"
    if d == "~":
        return f"{t} +- {entry.get('tolerance', 0)}"
    return f"{d} {t}"


def render_markdown(results: dict, run_info: dict, old_text: str | None) -> str:
    from benchmarks.perf_common import fmt

    m = run_info["machine"]
    lines = [
        "# Benchmarks",
        "",
        "## Performance",
        "",
        f"- **Command**: `{run_info['command']}` (`make bench`; `make bench-quick` for the smoke run)",
        f"- **Date**: {run_info['date']} ({run_info['mode']} mode), total runtime {run_info['runtime_s']:.0f} s",
        f"- **Machine**: {m.get('cpu_model')}, {m.get('cpus_usable')} cores usable of {m.get('cpu_cores')}, "
        f"{m.get('memory_gb')} GB RAM, shared with other jobs (load average {m.get('load_average_start')} at the "
        f"start, {run_info.get('load_average_end')} at the end)",
        f"- **Software**: Python {m.get('python')}, numpy {m.get('numpy')}, torch {m.get('torch')} "
        f"({run_info['threads']} intra-op thread(s)), pytorch-lightning {m.get('pytorch_lightning')}; git "
        f"{m.get('git_commit')}{' + uncommitted changes' if m.get('git_dirty') else ''}",
        "",
        "Every figure a target is stated for is a ratio of two measurements taken side by side in the same run "
        "(interleaved repetition by repetition; the table gives the median and the min-max of the per-repetition "
        "ratios), because the two cores are shared with other jobs: absolute samples/s and seconds are noisy "
        "(and lower than on an idle machine), ratios much less so. The JSON twin of these tables is "
        "`benchmarks/results/performance.json`.",
        "",
        _table(["benchmark", "figure the target is stated for", "measured", "target", "met?"],
               [[f"`{n}`", results[n].get("figure", ""), fmt(results[n].get("ratio")), _target_text(results[n]),
                 _met_word(results[n])] for n in NAMES if n in results]),
        "",
    ]
    for n in NAMES:
        if n not in results:
            continue
        e = results[n]
        lines += [f"### {TITLES[n]} (`{n}`)", ""]
        if e.get("error"):
            lines += ["**The benchmark failed:**", "", "```", e["error"][-2000:], "```", ""]
        if e.get("status"):
            lines += [f"**{e['status']}**", ""]
        if e.get("summary"):
            lines += [_table(["figure", "value", "target", "met?"], e["summary"]), ""]
        for t in e.get("tables", []):
            lines += [f"_{t['title']}_", "", _table(t["columns"], t["rows"]), ""]
        for note in e.get("notes", []):
            lines.append(f"- {note}")
        lines += [f"- Runtime of this benchmark: {e.get('seconds', 0):.0f} s ({e.get('mode')} mode, {e.get('date')}).",
                  ""]
    lines += [OPTIMISATIONS, ""]
    physical = PHYSICAL_PLACEHOLDER
    if old_text and PHYSICAL_HEADING in old_text:
        physical = old_text[old_text.index(PHYSICAL_HEADING):]
    return "\n".join(lines).rstrip() + "\n\n" + physical.rstrip() + "\n"


def _write(results: dict, run_info: dict, json_path: Path, md_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({n: results[n] for n in NAMES if n in results}, indent=1, default=float) + "\n")
    os.replace(tmp, json_path)
    old = md_path.read_text() if md_path.is_file() else None
    tmp = md_path.with_suffix(".md.tmp")
    tmp.write_text(render_markdown(results, run_info, old))
    os.replace(tmp, md_path)


# ---------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before numpy and torch are imported
    import importlib

    from benchmarks.perf_common import Context, machine, set_threads

    set_threads(args.threads)
    json_path, md_path = _outputs(args)
    selected = [n for n in ORDER if not args.only or n in args.only]
    results: dict = {}
    if args.only and json_path.is_file():
        try:
            results = json.loads(json_path.read_text())
        except json.JSONDecodeError:
            results = {}
    mode = "quick" if args.quick else "full"
    command = "python -m benchmarks.run" + "".join(" " + shlex.quote(str(a))
                                                   for a in (sys.argv[1:] if argv is None else argv))
    info = {"machine": machine(), "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "mode": mode, "command": command, "threads": args.threads, "runtime_s": 0.0}
    work = Path(tempfile.mkdtemp(prefix="cosmoinfer-bench-"))
    ctx = Context(quick=args.quick, work=work, gpu=args.gpu, threads=args.threads,
                  log=lambda s: print(s, flush=True))
    print(f"benchmarks ({mode}): {', '.join(selected)}; scratch {work}", flush=True)
    t_all = time.perf_counter()
    failed = []
    try:
        for name in selected:
            print(f"[{name}]", flush=True)
            mod, fn = FUNCTIONS[name]
            t0 = time.perf_counter()
            try:
                res = getattr(importlib.import_module(mod), fn)(ctx)
            except Exception:  # noqa: BLE001 - a failed benchmark is recorded, the others still run
                failed.append(name)
                res = {"ratio": None, "target": None, "direction": None, "met": None, "figure": "",
                       "error": traceback.format_exc()}
                print(res["error"], file=sys.stderr, flush=True)
            res.update(seconds=round(time.perf_counter() - t0, 1), mode=mode, date=info["date"], command=command)
            results[name] = res
            info["runtime_s"] = time.perf_counter() - t_all
            info["load_average_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
            _write(results, info, json_path, md_path)
            r = res.get("ratio")
            print(f"[{name}] {res.get('figure', '')}: {'n/a' if r is None else f'{r:.3g}'} "
                  f"(target {res.get('direction') or ''} {res.get('target')}, met: {res.get('met')}) "
                  f"in {res['seconds']:.0f} s", flush=True)
    finally:
        if args.keep_work:
            print(f"scratch kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"done in {time.perf_counter() - t_all:.0f} s; wrote {json_path} and {md_path}", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
