"""Map sources: a CMD-layout folder (memory-mapped ``.npy``) or the project's HDF5 store.

Both expose the same small interface, used by :class:`cosmoinfer.data.map_dataset.MapDataset`:

- ``n_maps``, ``grid``, ``fields`` (channel names), ``maps_per_sim``;
- ``params`` ``(n_sims, n_columns)`` float64 and ``param_names`` (file column order);
- ``priors`` (one :class:`Prior` per column);
- ``read(i0, i1) -> (i1-i0, C, H, W)`` float32, a contiguous block of maps in physical units.

Map ``i`` belongs to simulation ``i // maps_per_sim`` (15 in CMD). Nothing here loads a whole
file: ``.npy`` files are opened with ``np.load(mmap_mode="r")`` and HDF5 files are read chunk by
chunk, opened lazily in each DataLoader worker process.

Resident memory: the ``.npy`` memory maps give the header, shape and data offset, but the maps
themselves are read with positional reads (``os.preadv``) at that offset. Pages touched through a
memory map stay mapped into the process and count towards its resident set, so one epoch over a
4 GB file would leave a reader (and every DataLoader worker) with up to 4 GB resident; read with
``pread`` the data passes through the OS page cache, which is not charged to the process
(``benchmarks/perf_data.py`` measures both).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from cosmoinfer.data.manifest import Manifest, find_manifest, load_params_table
from cosmoinfer.data.param_checks import check_params_table
from cosmoinfer.data.priors import Prior
from cosmoinfer.errors import InputError

_PREAD = hasattr(os, "preadv")


def _pread_into(fh, out: np.ndarray, offset: int, path) -> None:
    """Fill the C-contiguous array ``out`` with the bytes of ``fh`` from ``offset`` on (positional reads)."""
    view = memoryview(out).cast("B")
    done = 0
    while done < len(view):
        got = os.preadv(fh.fileno(), [view[done:]], offset + done)
        if got <= 0:
            raise InputError(path, f"unexpected end of file at byte {offset + done}; the file is truncated")
        done += got


class CMDSource:
    """CMD-layout folder: ``Maps_{field}_{suite}_{set}_z=0.00.npy`` + ``params_{set}_{suite}.txt``."""

    def __init__(self, root, suite: str, fields: Sequence[str], set_: str = "LH",
                 manifest: str | Manifest | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(self.root, "data.root is not a folder")
        self.suite, self.set = suite, set_
        self.fields = list(fields)
        if not self.fields:
            raise InputError(self.root, "data.fields is empty; name at least one field, e.g. [Mtot]")
        self.manifest = manifest if isinstance(manifest, Manifest) else find_manifest(
            self.root, suite, set_, self.fields, manifest)
        self.manifest.validate(self.root, self.fields)
        self.maps_per_sim = self.manifest.maps_per_sim
        self.priors: list[Prior] = list(self.manifest.priors)
        self.param_names = self.manifest.param_names
        params_path = self.root / self.manifest.params_file
        self.params = load_params_table(params_path, n_columns=len(self.priors))
        origin = self.manifest.path or (
            f"the standard CAMELS {set_} priors, no manifest found" if self.manifest.name.startswith("inferred_")
            else f"manifest {self.manifest.name}")
        check_params_table(self.params, self.priors, params_path, manifest=origin)
        self.paths = [self.root / self.manifest.fields[f].file for f in self.fields]
        self.positive = [self.manifest.fields[f].positive for f in self.fields]
        shape = self.manifest.fields[self.fields[0]].shape
        self.n_maps, self.grid = int(shape[0]), int(shape[-1])
        for f in self.fields[1:]:
            if self.manifest.fields[f].shape != shape:
                raise InputError(self.paths[self.fields.index(f)], f"shape {self.manifest.fields[f].shape} "
                                 f"differs from field {self.fields[0]}'s {shape}")
        self._mmaps = None
        self._files = None
        self._pid = None

    def _open(self):
        if self._mmaps is None:
            self._mmaps = [np.load(p, mmap_mode="r") for p in self.paths]
        return self._mmaps

    def _handles(self):
        """Unbuffered read handles, one per field, opened lazily once per process (after a fork too)."""
        if self._files is None or self._pid != os.getpid():
            self._files = [open(p, "rb", buffering=0) for p in self.paths]
            self._pid = os.getpid()
        return self._files

    def _rows(self, channel: int, i0: int, i1: int) -> np.ndarray:
        """Rows ``i0:i1`` (slice semantics) of one field's file, in its own dtype, without mapping them."""
        m = self._open()[channel]
        rows = range(m.shape[0])[i0:i1]
        if rows.step != 1 or not _PREAD or not m.flags.c_contiguous:
            return np.asarray(m[i0:i1])
        out = np.empty((len(rows),) + m.shape[1:], dtype=m.dtype)
        if len(rows):
            _pread_into(self._handles()[channel], out, int(m.offset) + rows.start * int(m.strides[0]),
                        self.paths[channel])
        return out

    def read(self, i0: int, i1: int) -> np.ndarray:
        """Maps ``i0:i1`` as ``(n, C, H, W)`` float32 (reads only that block)."""
        if len(self.paths) == 1:
            return self._rows(0, i0, i1).astype(np.float32, copy=False)[:, None]
        return np.stack([self._rows(c, i0, i1).astype(np.float32, copy=False) for c in range(len(self.paths))],
                        axis=1)

    def read_one(self, i: int) -> np.ndarray:
        """Map ``i`` as ``(C, H, W)`` float32."""
        i = range(self.n_maps)[i]  # IndexError like numpy, negative indices allowed
        if len(self.paths) == 1:
            return self._rows(0, i, i + 1).astype(np.float32, copy=False)
        return np.stack([self._rows(c, i, i + 1)[0].astype(np.float32, copy=False)
                         for c in range(len(self.paths))], axis=0)

    def describe(self, i: int) -> str:
        return f"{self.paths[0] if len(self.paths) == 1 else self.root} map {i}"

    def file_of(self, channel: int) -> Path:
        return self.paths[channel]

    def locate(self, i: int, channel: int) -> tuple[Path, int]:
        """The file holding map ``i`` of field ``channel``, and the map's index in that file."""
        return self.paths[channel], int(i)

    def __del__(self):
        for fh in getattr(self, "_files", None) or []:
            try:
                fh.close()
            except OSError:
                pass

    def __getstate__(self):  # memmaps and read handles are reopened in each worker
        state = self.__dict__.copy()
        state["_mmaps"] = None
        state["_files"] = None
        state["_pid"] = None
        return state


class H5Source:
    """The project's HDF5 store (see :func:`cosmoinfer.data.hdf5.convert_to_hdf5`).

    Layout: dataset ``maps`` ``(n_maps, C, H, W)`` float32 chunked one map per chunk, ``params``
    ``(n_sims, n_columns)``, ``sim_id`` ``(n_maps,)``; attributes ``fields``, ``param_names``,
    ``priors`` (JSON), ``positive``, ``suite``, ``set``, ``maps_per_sim``.
    The file is opened lazily, once per process (DataLoader workers each open their own handle).
    """

    def __init__(self, path, fields: Sequence[str] | None = None):
        import json

        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(self.path, "HDF5 store not found")
        try:
            with h5py.File(self.path, "r") as f:
                for key in ("maps", "params", "sim_id"):
                    if key not in f:
                        raise InputError(self.path, f"HDF5 store is missing dataset {key!r}")
                all_fields = [str(s) for s in json.loads(f.attrs["fields"])]
                self.param_names = [str(s) for s in json.loads(f.attrs["param_names"])]
                self.priors = [Prior.from_dict(p) for p in json.loads(f.attrs["priors"])]
                positive = list(json.loads(f.attrs["positive"]))
                self.suite, self.set = str(f.attrs["suite"]), str(f.attrs["set"])
                self.maps_per_sim = int(f.attrs["maps_per_sim"])
                self.params = np.asarray(f["params"][...], dtype=np.float64)
                n_maps, _, _, self.grid = f["maps"].shape
        except InputError:
            raise
        except (OSError, KeyError, ValueError) as err:
            raise InputError(self.path, f"unreadable HDF5 store ({type(err).__name__}: {err})") from None
        self.fields = list(fields) if fields else all_fields
        unknown = [f for f in self.fields if f not in all_fields]
        if unknown:
            raise InputError(self.path, f"unknown field(s) {unknown}; the store holds {all_fields}")
        if self.params.ndim != 2 or self.params.shape[1] != len(self.priors) or \
                len(self.param_names) != len(self.priors):
            raise InputError(self.path, f"dataset 'params' has shape {self.params.shape} for {len(self.param_names)} "
                             f"parameter names and {len(self.priors)} priors")
        check_params_table(self.params, self.priors, self.path, label="dataset 'params' ",
                           manifest="the store's 'priors' attribute")
        self.channels = [all_fields.index(f) for f in self.fields]
        self.positive = [positive[c] for c in self.channels]
        self.n_maps = int(n_maps)
        if self.n_maps != self.maps_per_sim * len(self.params):
            raise InputError(self.path, f"{self.n_maps} maps but {len(self.params)} parameter rows x "
                             f"{self.maps_per_sim}")
        self._file = None
        self._pid = None

    def _maps(self):
        import h5py

        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file["maps"]

    def _damaged(self, what: str, err: OSError) -> InputError:
        return InputError(self.path, f"{what} cannot be read, the store is damaged ({type(err).__name__}: "
                                     f"{str(err)[:160]}); rebuild it with cosmoinfer-convert")

    def read(self, i0: int, i1: int) -> np.ndarray:
        try:
            block = self._maps()[i0:i1]
        except OSError as err:  # a corrupted chunk or chunk index shows only when the maps are read
            raise self._damaged(f"maps {i0}:{i1}", err) from None
        return np.ascontiguousarray(block[:, self.channels], dtype=np.float32)

    def read_one(self, i: int) -> np.ndarray:
        try:
            row = self._maps()[i]
        except OSError as err:
            raise self._damaged(f"map {i}", err) from None
        return np.ascontiguousarray(row[self.channels], dtype=np.float32)

    def describe(self, i: int) -> str:
        return f"{self.path} map {i}"

    def file_of(self, channel: int) -> Path:
        return self.path

    def locate(self, i: int, channel: int) -> tuple[Path, int]:
        """The file holding map ``i`` of field ``channel``, and the map's index in that file."""
        return self.path, int(i)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state


def open_source(root: str | None = None, suite: str = "IllustrisTNG", fields: Sequence[str] = ("Mtot",),
                set_: str = "LH", manifest: str | None = None, h5_path: str | None = None):
    """A :class:`H5Source` when ``h5_path`` is given, else a :class:`CMDSource` on ``root``."""
    if h5_path:
        return H5Source(h5_path, fields)
    if not root:
        raise InputError("data.root", "data.root is not set; point it at a CMD-layout folder")
    return CMDSource(root, suite, fields, set_, manifest)
