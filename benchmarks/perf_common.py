"""Shared pieces of the performance benchmarks: timing, side-by-side ratios, data sets, configs.

Every figure a target is stated for is a *ratio of two measurements taken side by side in one
run* (the two are interleaved, repetition by repetition, and the ratio is formed per repetition
and then the median taken), so that the load of other processes on a shared machine cancels as
far as it can.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import platform
import statistics
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Context:
    """What every benchmark function receives."""

    quick: bool
    work: Path  # scratch folder of this run (deleted at the end)
    gpu: bool = False
    threads: int = 1
    log: Callable[[str], None] = print
    extra: dict = field(default_factory=dict)

    def scratch(self, name: str) -> Path:
        p = self.work / name
        p.mkdir(parents=True, exist_ok=True)
        return p


# ---------------------------------------------------------------------------------------- timing
def interleave(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, dict[str, list[float]]]:
    """Call every function ``reps`` times, round-robin with a rotating start, after ``warmup`` rounds.

    Returns ``{name: {"wall": [s, ...], "cpu": [s, ...]}}`` per call; entry ``i`` of every list comes
    from the same round, so per-round ratios compare calls made seconds apart. ``cpu`` is this
    process's CPU time (all its threads): with one intra-op thread and no worker processes it is
    the cost of the call itself, unaffected by the time other jobs hold the core.
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    out: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(reps):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            c0, t0 = time.process_time(), time.perf_counter()
            fns[n]()
            out[n]["wall"].append(time.perf_counter() - t0)
            out[n]["cpu"].append(time.process_time() - c0)
    return out


def paired(num: list[float], den: list[float]) -> dict:
    """Median, min and max of the per-repetition ratios ``num[i] / den[i]``."""
    r = [a / b for a, b in zip(num, den)]
    return {"median": statistics.median(r), "min": min(r), "max": max(r), "n": len(r)}


def met(value: float | None, target: float | None, direction: str, tolerance: float = 0.0) -> bool | None:
    """``value >= target``, ``value <= target`` or (``"~"``) ``|value - target| <= tolerance``."""
    if value is None or target is None:
        return None
    if direction == "~":
        return bool(abs(value - target) <= tolerance)
    return bool(value >= target) if direction == ">=" else bool(value <= target)


def fmt(x, digits: int = 3) -> str:
    """Compact number for tables: ``12,345``, ``123``, ``12.3``, ``1.23``, ``0.0123``, ``1.2e-05``."""
    if x is None:
        return "n/a"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    x = float(x)
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 1e-3:
        return f"{x:.{digits}g}"
    return f"{x:.2e}"


def spread(p: dict) -> str:
    """``median (min-max over n)`` of a :func:`paired` result."""
    return f"{fmt(p['median'])} ({fmt(p['min'])}-{fmt(p['max'])}, n={p['n']})"


def result(*, ratio, target, direction: str, figure: str, summary: list[list], tables: list[dict] | None = None,
           notes: list[str] | None = None, details: dict | None = None, tolerance: float = 0.0, **extra) -> dict:
    """The JSON entry of one benchmark: ``ratio`` is the figure ``target`` is stated for.

    ``summary`` rows are ``[figure, value, target, met?]`` (strings) for the first table of the
    benchmark's section in RESULTS.md; ``tables`` are further ``{"title", "columns", "rows"}``.
    """
    return {
        "ratio": None if ratio is None else float(ratio),
        "target": target,
        "direction": direction,
        **({"tolerance": tolerance} if direction == "~" else {}),
        "met": met(ratio, target, direction, tolerance),
        "figure": figure,
        "summary": summary,
        "tables": tables or [],
        "notes": notes or [],
        "details": details or {},
        **extra,
    }


# ---------------------------------------------------------------------------------------- quiet frameworks
@contextlib.contextmanager
def quiet():
    """Silence Lightning's banners, progress bars and warnings (they go to a buffer)."""
    names = ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric",
             "cosmoinfer", "cosmoinfer.train", "hydra")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    buf = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for n, lv in levels.items():
            logging.getLogger(n).setLevel(lv)


# ---------------------------------------------------------------------------------------- machine
def machine() -> dict:
    """CPU model, cores, load, library versions: what a figure needs to be read against."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(Exception):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    info = {
        "cpu_model": model,
        "cpu_cores": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    with contextlib.suppress(Exception):
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    with contextlib.suppress(Exception):
        import pytorch_lightning as pl

        info["pytorch_lightning"] = pl.__version__
    with contextlib.suppress(Exception):
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                            text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["git_dirty"] = bool(dirty)
    return info


# ---------------------------------------------------------------------------------------- data sets
SUITE = "Bench"


def write_cmd_set(root: Path, n_sims: int, grid: int, seed: int = 0, fields=("Mtot",), block: int = 64) -> Path:
    """A CMD-layout folder of positive float32 maps (lognormal noise, one block tiled over the file).

    The content does not matter for speed or memory, so one block of ``block`` maps is drawn and
    written repeatedly with plain writes (no memory map, so this process's resident set stays small;
    a 4 GB file takes seconds). Parameters are drawn from the standard CAMELS LH priors; a manifest
    ``manifest_Bench.yaml`` is written so no warning is raised.
    """
    from cosmoinfer.data.manifest import Manifest, maps_filename, params_filename
    from cosmoinfer.data.priors import sample, standard_priors

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_maps = n_sims * 15
    for f in fields:
        tile = np.exp(0.5 * rng.standard_normal((min(block, n_maps), grid, grid), dtype=np.float32)) * 1e10
        header = np.lib.format.header_data_from_array_1_0(tile)
        header["shape"] = (n_maps, grid, grid)
        with open(root / maps_filename(f, SUITE, "LH"), "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            for i0 in range(0, n_maps, len(tile)):
                fh.write(tile[: min(len(tile), n_maps - i0)].tobytes())
    np.savetxt(root / params_filename(SUITE, "LH"), sample(standard_priors(), n_sims, rng))
    Manifest.for_folder(root, SUITE, "LH", list(fields), standard_priors(), name=f"bench_{grid}").save(
        root / f"manifest_{SUITE}.yaml")
    return root


def train_cfg(overrides: list[str]):
    """The composed ``cosmoinfer-train`` config (``conf/train.yaml``) with ``overrides``."""
    from hydra import compose, initialize_config_dir

    from cosmoinfer.cli.common import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
