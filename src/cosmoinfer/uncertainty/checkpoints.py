"""Where checkpoints are: one path, a list, a training folder or a glob, resolved to files."""

from __future__ import annotations

import glob
import re
from pathlib import Path

from omegaconf import ListConfig

from cosmoinfer.errors import InputError


def _natural_key(path: Path) -> list:
    """Sort ``multirun/2`` before ``multirun/10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def resolve_checkpoints(spec) -> list[Path]:
    """A checkpoint path, a list of them, a folder (``*/checkpoints/best.ckpt`` under it, e.g. a
    Hydra multirun folder, in job order, or its own ``checkpoints/best.ckpt``) or a glob pattern.

    A checkpoint named twice is an :class:`InputError` (it would count one member twice)."""
    items = list(spec) if isinstance(spec, (list, tuple, ListConfig)) else [spec]
    paths: list[Path] = []
    for item in items:
        item = str(item)
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("checkpoints/best.ckpt")) or sorted(p.glob("**/checkpoints/best.ckpt"),
                                                                       key=_natural_key)
            if not found:
                raise InputError(p, "no checkpoints/best.ckpt found in this folder or below it")
            paths.extend(found)
        elif any(ch in item for ch in "*?["):
            found = sorted((Path(x) for x in glob.glob(item, recursive=True)), key=_natural_key)
            if not found:
                raise InputError(item, "the checkpoint pattern matches no file")
            paths.extend(found)
        else:
            if not p.is_file():
                raise InputError(p, "checkpoint not found")
            paths.append(p)
    seen: set = set()
    for p in paths:
        key = p.resolve()
        if key in seen:
            raise InputError(p, "this checkpoint is named twice; an ensemble member must appear once")
        seen.add(key)
    return paths
