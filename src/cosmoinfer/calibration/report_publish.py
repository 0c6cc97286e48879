"""The report's files: the ``metrics.json`` document, and writing all files as one set.

Everything is computed and rendered in memory first; :func:`publish` then writes the files at
once, so an error never leaves a half-written file, and a ``report.html`` that exists always
belongs to the ``metrics.json`` and figures beside it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _jsonable(x: Any) -> Any:
    """Plain-JSON copy: numpy scalars/arrays to Python, NaN/inf to ``None``."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def metrics_document(blocks: Sequence[dict], levels: Sequence[float], seed: int) -> dict:
    """The ``metrics.json`` document: the first method's block, all blocks under ``comparison`` when
    there are several, the levels and the seed; plain JSON (NaN/inf as ``None``)."""
    doc = dict(blocks[0])
    if len(blocks) > 1:
        doc["comparison"] = list(blocks)
    doc["levels"] = list(levels)
    doc["seed"] = int(seed)
    return _jsonable(doc)


def metrics_json(doc: dict) -> str:
    """``metrics.json`` text of :func:`metrics_document`'s output (strict JSON, indented)."""
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def publish(out_dir: Path, files: dict[str, bytes]) -> None:
    """Write the report's files (``figures/*.png``, ``metrics.json``, ``report.html``) as one set.

    Everything is written into a temporary folder inside ``out_dir`` first; a failure there (a full
    disk) leaves the previous report untouched. Then the previous ``report.html`` goes, the new
    ``figures/`` replaces the old one whole, ``metrics.json`` follows, and ``report.html`` comes
    last: one run's metrics never sit beside another run's HTML, and a ``report.html`` that exists
    belongs to the ``metrics.json`` and figures beside it.
    """
    import shutil
    import tempfile

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out_dir))
    try:
        for name, data in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (out_dir / "report.html").unlink(missing_ok=True)
        if (out_dir / "figures").exists():
            shutil.rmtree(out_dir / "figures")
        if (staging / "figures").is_dir():
            os.replace(staging / "figures", out_dir / "figures")
        os.replace(staging / "metrics.json", out_dir / "metrics.json")
        os.replace(staging / "report.html", out_dir / "report.html")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
