"""Data pipeline: samples/s the DataModule delivers against what the training step consumes, and
the peak memory of training one epoch from an on-disk set of 4 GB or more.

Throughput: the real ``CMDDataModule`` (``num_workers=2``, augmentation on, batch 32) iterating its
training loader over an on-disk CMD-layout folder (``.npy``) and over the same maps converted to
the HDF5 store, against the samples/s of training steps on in-memory batches (the minimal loop of
``perf_training``, an upper bound on the Lightning step, so the ratio is conservative). Both are
wall-clock rates taken in interleaved rounds.

Memory: a child process runs the real ``cosmoinfer-train`` for one epoch (``num_workers=2``) on a
CMD-layout file of >= 4 GB (full mode; a small one in quick mode); the parent samples the summed
proportional set size (PSS: shared pages split between the processes that share them) of the
child and its DataLoader workers every 0.05 s; the child reports its own exact peak RSS (VmHWM) at
exit, which with the workers' peak private memory gives a bound no sampling gap can miss. The
same run with the former memory-mapped reads (``--reader mmap``) is measured beside it.

Run a child by hand: ``python -m benchmarks.perf_data --child [--reader mmap] <hydra overrides>``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.perf_common import (
    REPO,
    Context,
    fmt,
    interleave,
    paired,
    quiet,
    result,
    spread,
    write_cmd_set,
)


# ---------------------------------------------------------------------------------------- throughput
def _datamodule(root: Path, h5: Path | None, batch: int, workers: int):
    from cosmoinfer.data.datamodule import CMDDataModule

    with quiet():
        dm = CMDDataModule(root=None if h5 else str(root), h5_path=str(h5) if h5 else None, suite="Bench",
                           fields=["Mtot"], batch_size=batch, num_workers=workers, augment=True,
                           split_fractions=[0.8, 0.1, 0.1])
        dm.setup("fit")
    return dm


def _epoch(loader) -> int:
    n = 0
    for x, _, _ in loader:
        n += len(x)
    return n


def _consumer(arch: str, grid: int, batch: int, steps: int, **kw):
    """A function running ``steps`` training steps of ``arch`` on in-memory batches (the minimal loop)."""
    import torch

    from cosmoinfer.models.likelihoods import build_likelihood
    from cosmoinfer.models.network import build_network

    lik = build_likelihood("gaussian_nll", 2)
    net = build_network(arch, 1, grid, lik.n_outputs, **kw)
    if arch == "ps_mlp":
        net.set_input_stats(torch.tensor([10.0]), torch.tensor([0.3]), torch.tensor([True]))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(batch, 1, grid, grid, generator=g) for _ in range(min(steps, 4))]
    y = torch.rand(batch, 2, generator=g)
    net.train()

    def run():
        for i in range(steps):
            opt.zero_grad(set_to_none=True)
            lik.loss(net(xs[i % len(xs)]), y).backward()
            opt.step()

    return run, steps * batch


def _throughput(ctx: Context) -> dict:
    from cosmoinfer.data.hdf5 import convert_to_hdf5

    if ctx.quick:
        grid, n_sims, batch, reps = 32, 20, 16, 1
        consumers = [("cmd_cnn default (hidden 16)", "cmd_cnn", 2, {"hidden": 16})]
    else:
        grid, n_sims, batch, reps = 64, 100, 32, 3
        consumers = [("cmd_cnn default (hidden 16)", "cmd_cnn", 3, {"hidden": 16}),
                     ("cmd_cnn quickstart width (hidden 8)", "cmd_cnn", 6, {"hidden": 8}),
                     ("ps_mlp (power-spectrum baseline, the cheapest step we ship)", "ps_mlp", 20, {})]
    root = write_cmd_set(ctx.work / f"set_data_{grid}", n_sims=n_sims, grid=grid)
    h5 = ctx.work / f"set_data_{grid}.h5"
    with quiet():
        convert_to_hdf5(root, "Bench", ["Mtot"], h5)
    dms = {"npy": _datamodule(root, None, batch, 2), "hdf5": _datamodule(root, h5, batch, 2),
           "npy_0w": _datamodule(root, None, batch, 0)}
    loaders = {k: dm.train_dataloader() for k, dm in dms.items()}
    n_epoch = {k: _epoch(ld) for k, ld in loaders.items()}  # warm-up: starts the persistent workers
    fns = {k: (lambda ld=ld: _epoch(ld)) for k, ld in loaders.items()}
    n_cons = {}
    for label, arch, steps, kw in consumers:
        run, n = _consumer(arch, grid, batch, steps, **kw)
        fns[label] = run
        n_cons[label] = n
    t = interleave(fns, reps, warmup=0)
    rates = {k: [n_epoch[k] / s for s in t[k]["wall"]] for k in loaders}
    crates = {k: [n_cons[k] / s for s in t[k]["wall"]] for k in n_cons}
    del loaders, fns, dms  # the persistent workers end with their loaders
    import gc

    gc.collect()
    return {"grid": grid, "batch": batch, "n_sims": n_sims, "rates": rates, "consumer_rates": crates,
            "maps_per_epoch": n_epoch, "reps": reps}


# ---------------------------------------------------------------------------------------- memory
def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from ``/proc/<pid>/task/<tid>/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                try:
                    with open(f"/proc/{p}/task/{tid}/children") as fh:
                        todo += [int(c) for c in fh.read().split()]
                except OSError:
                    pass
        except OSError:
            pass
    return out


def _rollup(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, private = USS) of one process in bytes, from ``/proc/<pid>/smaps_rollup`` (0 if gone)."""
    rss = pss = uss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                    uss += int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss, uss


def run_child(overrides: list[str], reader: str, log_path: Path, timeout: float) -> dict:
    """Run ``cosmoinfer-train`` in a child; peak summed PSS / RSS of its process tree and its ``ru_maxrss``."""
    import json

    cmd = [sys.executable, "-m", "benchmarks.perf_data", "--child", "--reader", reader, *overrides]
    peak = {"pss_sum": 0, "rss_sum": 0, "rss_max": 0, "n_proc": 0}
    report = log_path.with_suffix(".memory.json")
    env = {**os.environ, "COSMOINFER_BENCH_MEMORY_REPORT": str(report)}
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        stop = threading.Event()

        uss_by_pid: dict[int, int] = {}

        def sample():
            while not stop.is_set():
                pids = _tree(proc.pid)
                vals = [_rollup(p) for p in pids]
                for p, v in zip(pids, vals):
                    uss_by_pid[p] = max(uss_by_pid.get(p, 0), v[2])
                peak["pss_sum"] = max(peak["pss_sum"], sum(v[1] for v in vals))
                peak["rss_sum"] = max(peak["rss_sum"], sum(v[0] for v in vals))
                peak["rss_max"] = max(peak["rss_max"], max((v[0] for v in vals), default=0))
                peak["n_proc"] = max(peak["n_proc"], len(vals))
                stop.wait(0.05)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        try:
            deadline = time.monotonic() + timeout
            while True:
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    pid, status, ru = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.1)
        finally:
            stop.set()
            th.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
    own = json.loads(report.read_text()) if report.is_file() else {}
    # a bound that no sampling gap can miss: the trainer's exact peak RSS (all pages it maps, shared
    # ones included) plus every worker's peak private memory (their peaks need not coincide)
    if own.get("trainer_peak_rss") is not None:
        others = sum(v for p, v in uss_by_pid.items() if p != proc.pid)
        peak["bound"] = own["trainer_peak_rss"] + others
    # wait4's ru_maxrss is not used: with vfork (how subprocess starts children) the child inherits the
    # launching process's high-water mark at exec, so it reports this benchmark process's peak instead
    return {**peak, **own, "wait4_ru_maxrss": ru.ru_maxrss * 1024, "returncode": proc.returncode, "wall_s": wall}


def _memory(ctx: Context) -> dict:
    if ctx.quick:
        grid, n_sims, limit_mmap = 64, 40, None
    else:
        grid, n_sims, limit_mmap = 256, 1100, 0.1
    size = n_sims * 15 * grid * grid * 4
    free = shutil.disk_usage(ctx.work).free
    note = None
    if size * 1.5 + 2e9 > free:  # leave room; fall back to what fits and say so
        n_sims = max(20, int((free - 2e9) / 1.5 / (15 * grid * grid * 4)))
        note = f"only {free / 1e9:.1f} GB free on {ctx.work}: the set was shrunk to {n_sims} simulations"
        size = n_sims * 15 * grid * grid * 4
    root = ctx.work / "set_memory"
    t0 = time.perf_counter()
    write_cmd_set(root, n_sims=n_sims, grid=grid)
    write_s = time.perf_counter() - t0
    ctx.log(f"  wrote {size / 1e9:.2f} GB ({n_sims * 15} maps of {grid}^2) in {write_s:.0f} s")
    out = ctx.scratch("memory_run")
    base = [f"data.root={root}", "data.suite=Bench", "model=ps_mlp", "trainer.max_epochs=1",
            "data.num_workers=2", "data.batch_size=32", "data.split_fractions=[0.98,0.01,0.01]"]
    runs = {}
    try:
        for reader, extra in (("pread", []),
                              ("mmap", [f"+trainer.limit_train_batches={limit_mmap}"] if limit_mmap else [])):
            if ctx.quick and reader == "mmap":
                continue
            o = out / reader
            r = run_child(base + extra + [f"out_dir={o}", f"hydra.run.dir={o}"], reader, out / f"{reader}.log",
                          timeout=900)
            if r["returncode"] != 0:
                raise RuntimeError(f"training child ({reader}) failed:\n" + (out / f"{reader}.log").read_text()[-3000:])
            runs[reader] = r
            ctx.log(f"  {reader}: peak PSS sum {r['pss_sum'] / 1e9:.2f} GB, max RSS {r['rss_max'] / 1e9:.2f} GB, "
                    f"{r['wall_s']:.0f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"grid": grid, "n_maps": n_sims * 15, "bytes": size, "write_s": write_s, "runs": runs, "note": note,
            "limit_mmap": limit_mmap}


# ---------------------------------------------------------------------------------------- benchmark
def _gb(x) -> str:
    return "n/a" if x is None else f"{x / 1e9:.2f}"


def data_pipeline(ctx: Context) -> dict:
    tp = _throughput(ctx)
    rates, crates = tp["rates"], tp["consumer_rates"]
    default = next(iter(crates))
    ratios = {path: paired(rates[path], crates[default]) for path in ("npy", "hdf5")}
    worst = min(ratios, key=lambda k: ratios[k]["median"])
    ratio = ratios[worst]["median"]
    med = {k: float(np.median(v)) for k, v in rates.items()}
    cmed = {k: float(np.median(v)) for k, v in crates.items()}
    summary = [
        ["DataModule, CMD .npy folder, 2 workers, augmentation on", f"{fmt(med['npy'])} samples/s", "", ""],
        ["DataModule, HDF5 store, 2 workers, augmentation on", f"{fmt(med['hdf5'])} samples/s", "", ""],
        [f"training step consumes ({default})", f"{fmt(cmed[default])} samples/s", "", ""],
        [f"**delivered / consumed** (slower path: {worst}), median (min-max)", spread(ratios[worst]), ">= 3",
         fmt(ratio >= 3)],
        ["delivered / consumed, the other path", spread(ratios["npy" if worst == "hdf5" else "hdf5"]), ">= 3",
         fmt(ratios["npy" if worst == "hdf5" else "hdf5"]["median"] >= 3)],
    ]
    rows = [[k, fmt(cmed[k]), fmt(med["npy"] / cmed[k]), fmt(med["hdf5"] / cmed[k])] for k in crates]
    mem = _memory(ctx)
    fixed = mem["runs"]["pread"]
    peak_fig = max(fixed["pss_sum"], fixed.get("bound", 0))  # judged on the upper bound where it is larger
    mem_ok = peak_fig <= 1.5e9
    size_txt = f"{mem['bytes'] / 1e9:.2f} GB ({mem['bytes'] / 2**30:.2f} GiB; {mem['n_maps']:,} maps of {mem['grid']}^2)"
    summary += [
        [f"**peak memory, one training epoch from an on-disk set of {size_txt}**: trainer peak RSS + each of its "
         f"{max(fixed['n_proc'] - 1, 0)} workers' peak private memory (bound)", f"{_gb(fixed.get('bound'))} GB",
         "<= 1.5 GB", fmt(mem_ok)],
        ["same run: PSS summed over the process tree, sampled every 0.05 s (peak)",
         f"{fixed['pss_sum'] / 1e9:.2f} GB", "", ""],
        ["same run: peak RSS of the trainer process (VmHWM) / of its largest worker (incl. pages shared with "
         "the trainer)", f"{_gb(fixed.get('trainer_peak_rss'))} / {_gb(fixed.get('worker_peak_rss'))} GB", "", ""],
    ]
    if "mmap" in mem["runs"]:
        b = mem["runs"]["mmap"]
        part = "all of the" if not mem["limit_mmap"] else f"{mem['limit_mmap']:.0%} of the"
        summary.append([f"former memory-mapped reads, same set (normalisation pass + {part} epoch): PSS sum / "
                        "trainer peak RSS / largest worker RSS",
                        f"{b['pss_sum'] / 1e9:.2f} / {_gb(b.get('trainer_peak_rss'))} / "
                        f"{_gb(b.get('worker_peak_rss'))} GB", "<= 1.5 GB", fmt(b["pss_sum"] <= 1.5e9)])
    notes = [
        f"Throughput: {tp['n_sims']} simulations ({tp['n_sims'] * 15} maps of {tp['grid']}^2), training split "
        f"{tp['maps_per_epoch']['npy']} maps per epoch, batch {tp['batch']}, {tp['reps']} interleaved rounds of "
        "one loader epoch each and a few in-memory training steps per model (wall clock; persistent workers "
        "already started). The consumer uses one thread, the loader its two worker processes: the cores are "
        "shared with other jobs, so rates are lower than on an idle machine.",
        f"Without workers (num_workers=0, the conf/data/cmd.yaml default) the .npy path delivers "
        f"{fmt(med['npy_0w'])} samples/s in the training process itself.",
        f"Memory run: `cosmoinfer-train model=ps_mlp trainer.max_epochs=1 data.num_workers=2` in a child process "
        f"(ps_mlp because its step is cheap, so one epoch over the whole set fits the time budget; the data path "
        f"is the same for every model). PSS is summed over the process tree, sampled every 0.05 s; wall time "
        f"of the run {fixed['wall_s']:.0f} s including start-up and the normalisation pass over every map.",
    ]
    notes.append(
        f"The HDF5 store delivers {fmt(med['hdf5'] / med['npy'])}x the .npy path's rate (h5py's per-read overhead "
        "on one-map chunks); with 2 workers on 2 shared cores the .npy path is about as fast as reading in the "
        f"training process ({fmt(med['npy_0w'])} samples/s with num_workers=0). Only the cheapest step (ps_mlp) "
        "comes near what the loader delivers.")
    notes.append(
        "Where the trainer's peak comes from: the epoch-end validation forward at eval_batch_size=256 (the "
        "conf/data/cmd.yaml default) on 256^2 maps, not the data: ps_mlp holds a few float64 copies of the "
        "batch. For the default cmd_cnn (hidden 16) at 256^2 that batch size needs ~8.6 GB of activations "
        "(0.54 GB measured for 16 maps under no_grad), so at CMD resolution eval_batch_size should be scaled "
        "down (e.g. to the training batch size); not changed here (the data config is owned elsewhere).")
    if ctx.quick:
        notes.append(f"Quick mode: the memory run uses a small set ({size_txt}), not >= 4 GB, and no mmap baseline.")
    if mem["note"]:
        notes.append(mem["note"])
    if "mmap" in mem["runs"]:
        notes.append("The memory-mapped baseline is the same code with CMDSource reading through np.load's "
                     "memory map (as before the change): every page a process reads stays mapped and counts "
                     "towards its resident set, so the trainer (its normalisation pass reads every map) and each "
                     "worker grow towards the file size. Positional reads (os.preadv) go through the page cache, "
                     "which is not charged to the processes.")
    return result(
        ratio=ratio, target=3.0, direction=">=",
        figure="DataModule samples/s / training-step samples/s (slower of .npy and HDF5)",
        summary=summary,
        tables=[{"title": f"Delivered / consumed for other models ({tp['grid']}^2, batch {tp['batch']})",
                 "columns": ["training step", "consumes (samples/s)", ".npy delivers / consumes",
                             "HDF5 delivers / consumes"], "rows": rows}],
        notes=notes,
        details={"throughput": tp, "memory": mem, "peak_pss_gb": fixed["pss_sum"] / 1e9, "memory_target_gb": 1.5,
                 "memory_met": mem_ok},
        memory={"peak_pss_gb": round(fixed["pss_sum"] / 1e9, 3), "target_gb": 1.5, "met": mem_ok,
                "set_gb": round(mem["bytes"] / 1e9, 3)},
    )


# ---------------------------------------------------------------------------------------- child entry
def _report_memory(path: str) -> None:
    """At exit: this process's peak RSS since exec (VmHWM) and the largest of its waited-for workers."""
    import json
    import resource

    hwm = None
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    Path(path).write_text(json.dumps({"trainer_peak_rss": hwm, "worker_peak_rss": kids}))


def _child(argv: list[str]) -> None:
    import atexit

    if os.environ.get("COSMOINFER_BENCH_MEMORY_REPORT"):
        atexit.register(_report_memory, os.environ["COSMOINFER_BENCH_MEMORY_REPORT"])
    reader = "pread"
    if argv[:1] == ["--reader"]:
        reader, argv = argv[1], argv[2:]
    if reader == "mmap":
        import cosmoinfer.data.sources as sources

        sources._PREAD = False  # the former behaviour: read maps through np.load's memory map
    from cosmoinfer.cli.train import main

    sys.argv = ["cosmoinfer-train", *argv]
    main()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2:])
    else:
        sys.exit("usage: python -m benchmarks.perf_data --child [--reader pread|mmap] <hydra overrides>")
