"""Convert a CMD-layout folder into one chunked HDF5 store (see :class:`H5Source` for the layout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from cosmoinfer.data.sources import CMDSource
from cosmoinfer.errors import InputError, atomic_path, ensure_writable_dir


def convert_to_hdf5(root, suite: str, fields: Sequence[str], out_path, set_: str = "LH",
                    manifest: str | None = None, block: int = 256, compression: str | None = None) -> Path:
    """Write ``out_path`` (HDF5) from the CMD files in ``root``, streaming ``block`` maps at a time.

    ``maps`` is ``(n_maps, C, H, W)`` float32 chunked one map per chunk, so a random-access
    DataLoader reads exactly one chunk per sample. The write is atomic. An ``out_path`` that is a
    folder, or lies in a folder that cannot be written, is refused (:class:`InputError` naming
    ``out``) before any map is read.
    """
    import h5py

    out_path = Path(out_path)
    if out_path.is_dir():
        raise InputError("out", f"{out_path.resolve()} is a folder; name the HDF5 file to write, "
                                f"e.g. {out_path / 'store.h5'}")
    ensure_writable_dir(out_path.resolve().parent, "out")
    src = CMDSource(root, suite, fields, set_, manifest)
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w") as f:
            shape = (src.n_maps, len(src.fields), src.grid, src.grid)
            maps = f.create_dataset("maps", shape=shape, dtype="float32",
                                    chunks=(1, len(src.fields), src.grid, src.grid), compression=compression)
            for i0 in range(0, src.n_maps, block):
                i1 = min(i0 + block, src.n_maps)
                maps[i0:i1] = src.read(i0, i1)
            f.create_dataset("params", data=src.params)
            f.create_dataset("sim_id", data=np.arange(src.n_maps) // src.maps_per_sim)
            f.attrs["fields"] = json.dumps(src.fields)
            f.attrs["param_names"] = json.dumps(src.param_names)
            f.attrs["priors"] = json.dumps([p.to_dict() for p in src.priors])
            f.attrs["positive"] = json.dumps([bool(p) for p in src.positive])
            f.attrs["suite"] = suite
            f.attrs["set"] = set_
            f.attrs["maps_per_sim"] = src.maps_per_sim
            f.attrs["source"] = str(Path(root).resolve())
    return out_path
