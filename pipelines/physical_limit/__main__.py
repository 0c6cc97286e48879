"""``python -m pipelines.physical_limit``: run the benchmark's stages, then write its figures and table."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

from cosmoinfer.errors import InputError, atomic_write_text
from cosmoinfer.stages import FolderLock, StageRunner, terminate_on_sigterm
from pipelines import physical_limit as _pkg
from pipelines.physical_limit.scales import REPO, SCALES, scale_config
from pipelines.physical_limit.summaries import (
    summarise_camels,
    summarise_cross,
    summarise_grf,
    summarise_heads,
    summarise_sweep,
    write_json,
)
from pipelines.physical_limit.tables import machine, old_notes, render_section, update_results_md
from pipelines.physical_limit.tasks import PARTS, all_tasks, select_stages

PROG = "python -m pipelines.physical_limit"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=_pkg.__doc__.split("\n")[0])
    ap.add_argument("--scale", default="reduced", choices=list(SCALES))
    ap.add_argument("--only", default=None, choices=list(PARTS), help="run one part (default: all)")
    ap.add_argument("--out", default="runs/physical_limit", help="output folder of all stages")
    ap.add_argument("--jobs", type=int, default=2, help="stages run at once")
    ap.add_argument("--threads", type=int, default=1, help="torch/BLAS threads per stage")
    ap.add_argument("--json", default=None,
                    help="results JSON (default: benchmarks/results/physical_limit.json; "
                         "--scale quick: OUT/physical_limit.json)")
    ap.add_argument("--md", default=None, help="RESULTS.md to update (default: benchmarks/RESULTS.md; "
                                               "--scale quick: OUT/RESULTS.md)")
    ap.add_argument("--stages", default=None,
                    help="only the stages whose names match these comma-separated shell patterns (with the "
                         "stages they read), e.g. 'heads * diagonal,heads * flow_on_diagonal'; the JSON keeps "
                         "the last figures of the others")
    ap.add_argument("--summary-only", action="store_true",
                    help="only recompute the figures from existing runs")
    a = ap.parse_args(argv)
    try:
        return run(a, argv)
    except InputError as err:  # e.g. another run holds --out: one line, nothing touched
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the running stages' processes are stopped; their records say "running"
        print("error: interrupted; the same command continues where this run stopped", file=sys.stderr)
        return 130


def run(a: argparse.Namespace, argv=None) -> int:
    out = Path(a.out).resolve()
    quick = a.scale == "quick"
    json_path = Path(a.json) if a.json else (out / "physical_limit.json" if quick else
                                             REPO / "benchmarks" / "results" / "physical_limit.json")
    md_path = Path(a.md) if a.md else (out / "RESULTS.md" if quick else REPO / "benchmarks" / "RESULTS.md")
    parts = [a.only] if a.only else list(PARTS)
    sc = scale_config(a.scale)
    t0 = time.time()
    terminate_on_sigterm()  # SIGTERM stops the running stages' processes too
    with FolderLock(out, holder=PROG, option="--out"):
        runner = StageRunner()
        if not a.summary_only:
            print(f"[physical_limit] {out} (stage logs in {out / 'logs'})", flush=True)
            tasks = all_tasks(out, sc, parts, threads=a.threads)
            if a.stages:
                tasks = select_stages(tasks, [x.strip() for x in a.stages.split(",") if x.strip()])
            runner.run_graph(tasks, jobs=a.jobs)
        failed = dict(runner.failed)
        info = {"date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine(),
                "command": f"{PROG} " + " ".join(argv if argv is not None else sys.argv[1:]),
                "scale": a.scale, "parts": parts, "jobs": a.jobs, "threads": a.threads, "failed": failed}
        results = {}
        if "grf" in parts:
            results.update(summarise_grf(out, info))
        if "heads" in parts:
            results.update(summarise_heads(out, info))
        if "camels" in parts:
            results.update(summarise_camels(out, info))
        if "cross" in parts:
            results.update(summarise_cross(out, info))
        if "sweep" in parts:
            results.update(summarise_sweep(out, sc, info))
    info["wall_minutes"] = (time.time() - t0) / 60
    merged = write_json(json_path, results)
    # the run record (per-part dates, training times, cross-suite verdicts) lives beside the JSON, so a
    # rerun of one part on a fresh clone keeps what the other parts' runs recorded
    runs_info = json_path.with_name(json_path.stem + "_info.json")
    old_info = json.loads(runs_info.read_text()) if runs_info.is_file() else {}
    keep = ("failed",)
    if a.summary_only and old_info:  # keep the record of the run that made the stages
        keep += ("command", "wall_minutes", "date", "jobs", "threads")
    # per-part records (camels/heads training times, cross verdicts ...) merge model by model: a run of some
    # stages keeps what earlier runs recorded for the others, as the JSON keeps their figures
    old_info.update({k: _merged(old_info.get(k), v) for k, v in info.items() if k not in keep})
    if "recalibration_fit" in info:
        old_info.pop("n_val", None)  # superseded: the recalibration fit set is named in recalibration_fit
    old_info.setdefault("failed_by_run", {})[info["date"]] = failed
    if not a.summary_only:  # the scale and date of each part's last run (parts may run separately)
        old_info.setdefault("parts_run", {}).update({p: f"{a.scale}, {info['date']}" for p in parts})
    atomic_write_text(runs_info, json.dumps(old_info, indent=2, default=str) + "\n")
    info_all = {**old_info, "failed": failed}
    update_results_md(md_path, render_section(merged, info_all, old_notes(md_path)))
    print(f"results: {json_path}\ntable: {md_path}", flush=True)
    return 1 if failed else 0


def _merged(old, new):
    """``new`` with ``old``'s entries that ``new`` lacks, dicts merged recursively (``new`` wins)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return new
    return {**old, **{k: _merged(old.get(k), v) for k, v in new.items()}}


if __name__ == "__main__":
    sys.exit(main())
