"""Dataset manifests: one YAML per dataset naming its files, shapes, dtypes, fields and priors.

A manifest states everything the pipeline assumes about a CMD-layout folder, so a mismatch is
caught before training instead of surfacing as a silently wrong statistic::

    name: cmd_IllustrisTNG_LH_2D
    suite: IllustrisTNG
    set: LH
    n_sims: 1000
    maps_per_sim: 15
    fields:
      Mtot: {file: Maps_Mtot_IllustrisTNG_LH_z=0.00.npy, shape: [15000, 256, 256], dtype: float32,
             positive: true, sha256: null}
    params_file: {file: params_LH_IllustrisTNG.txt, shape: [1000, 6]}
    params:                      # in file column order
      - {name: Omega_m, low: 0.1, high: 0.5, distribution: uniform}
      ...

Loading validates the files against it (:meth:`Manifest.validate`): existence, ``.npy`` header
shape and dtype, parameter table shape, map count = ``maps_per_sim`` × rows, optional sha256.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import yaml

from cosmoinfer.data.priors import CMD_PARAM_NAMES, Prior, standard_priors
from cosmoinfer.errors import InputError, atomic_write_text

log = logging.getLogger(__name__)

MAPS_PER_SIM = 15
#: Folder of the manifests shipped with the repository.
MANIFEST_DIR = Path(__file__).resolve().parents[3] / "data_manifests"


def maps_filename(field: str, suite: str, set_: str = "LH") -> str:
    """CMD map file name, e.g. ``Maps_Mtot_IllustrisTNG_LH_z=0.00.npy``."""
    return f"Maps_{field}_{suite}_{set_}_z=0.00.npy"


def params_filename(suite: str, set_: str = "LH") -> str:
    """CMD parameter table name, e.g. ``params_LH_IllustrisTNG.txt``."""
    return f"params_{set_}_{suite}.txt"


@dataclass
class FieldSpec:
    """One map file: name, shape ``(n_maps, H, W)``, dtype, positivity, optional sha256."""

    file: str
    shape: tuple[int, int, int]
    dtype: str = "float32"
    positive: bool = True
    sha256: str | None = None


@dataclass
class Manifest:
    """Description of one CMD-layout dataset (one suite and set)."""

    name: str
    suite: str
    set: str
    n_sims: int
    fields: dict[str, FieldSpec]
    priors: list[Prior]  # all columns of the parameter table, in file order
    params_file: str = ""
    maps_per_sim: int = MAPS_PER_SIM
    description: str = ""
    extra: dict = field(default_factory=dict)
    path: str | None = None  # where it was loaded from, for error messages

    def __post_init__(self):
        if not self.params_file:
            self.params_file = params_filename(self.suite, self.set)

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.priors]

    @property
    def grid(self) -> int:
        return int(next(iter(self.fields.values())).shape[-1])

    # ------------------------------------------------------------------ YAML round trip
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "suite": self.suite,
            "set": self.set,
            "n_sims": int(self.n_sims),
            "maps_per_sim": int(self.maps_per_sim),
            "fields": {
                k: {"file": f.file, "shape": [int(s) for s in f.shape], "dtype": f.dtype,
                    "positive": bool(f.positive), "sha256": f.sha256}
                for k, f in self.fields.items()
            },
            "params_file": {"file": self.params_file, "shape": [int(self.n_sims), len(self.priors)]},
            "params": [p.to_dict() for p in self.priors],
            "extra": self.extra,
        }

    def save(self, path: str | Path) -> Path:
        """Write the manifest as YAML, atomically."""
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
        return Path(path)

    @classmethod
    def from_dict(cls, d: dict, path: str | None = None) -> "Manifest":
        where = path or "<manifest>"
        try:
            fields = {
                k: FieldSpec(v["file"], tuple(int(s) for s in v["shape"]), str(v.get("dtype", "float32")),
                             bool(v.get("positive", True)), v.get("sha256"))
                for k, v in d["fields"].items()
            }
            params_file = d.get("params_file") or {}
            if isinstance(params_file, dict):
                params_file = params_file.get("file", "")
            return cls(
                name=str(d["name"]), suite=str(d["suite"]), set=str(d.get("set", "LH")),
                n_sims=int(d["n_sims"]), fields=fields,
                priors=[Prior.from_dict(p) for p in d["params"]],
                params_file=str(params_file), maps_per_sim=int(d.get("maps_per_sim", MAPS_PER_SIM)),
                description=str(d.get("description", "")), extra=dict(d.get("extra") or {}), path=path,
            )
        except KeyError as err:
            raise InputError(where, f"manifest is missing key {err.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as err:
            raise InputError(where, f"malformed manifest: {err}") from None

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "manifest file not found")
        try:
            d = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise InputError(path, f"not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(d, dict):
            raise InputError(path, "manifest must be a YAML mapping")
        return cls.from_dict(d, str(path))

    # ------------------------------------------------------------------ building from files
    @classmethod
    def for_folder(cls, root, suite: str, set_: str, fields: Sequence[str], priors: Sequence[Prior],
                   name: str, extra: dict | None = None, positive: dict | None = None,
                   with_sha256: bool = False, description: str = "") -> "Manifest":
        """Describe the CMD-layout files in ``root`` (reads only ``.npy`` headers)."""
        root = Path(root)
        specs = {}
        for f in fields:
            path = root / maps_filename(f, suite, set_)
            shape, dtype = npy_header(path)
            specs[f] = FieldSpec(path.name, shape, dtype, True if positive is None else bool(positive.get(f, True)),
                                 sha256_file(path) if with_sha256 else None)
        n_maps = next(iter(specs.values())).shape[0]
        return cls(name=name, suite=suite, set=set_, n_sims=n_maps // MAPS_PER_SIM, fields=specs,
                   priors=list(priors), description=description, extra=dict(extra or {}))

    # ------------------------------------------------------------------ validation
    def validate(self, root, fields: Iterable[str] | None = None, check_sha256: bool = True) -> None:
        """Check the files in ``root`` against the manifest; raise :class:`InputError` on mismatch."""
        root = Path(root)
        for name in fields if fields is not None else self.fields:
            if name not in self.fields:
                raise InputError(self.path or root, f"unknown field {name!r} for suite {self.suite}; "
                                 f"known: {sorted(self.fields)}")
            spec = self.fields[name]
            path = root / spec.file
            shape, dtype = npy_header(path)
            if dtype != spec.dtype:
                raise InputError(path, f"dtype is {dtype}, manifest {self.name} says {spec.dtype}")
            if len(shape) != 3:
                raise InputError(path, f"maps must have shape (n_maps, H, W), got {shape}")
            if tuple(shape) != tuple(spec.shape):
                raise InputError(path, f"shape is {tuple(shape)}, manifest {self.name} says {tuple(spec.shape)}")
            if shape[1] != shape[2]:
                raise InputError(path, f"maps must be square, got {shape[1]}x{shape[2]}")
            if shape[0] != self.maps_per_sim * self.n_sims:
                raise InputError(path, f"{shape[0]} maps but {self.n_sims} simulations x {self.maps_per_sim} "
                                 f"maps = {self.maps_per_sim * self.n_sims} expected")
            if check_sha256 and spec.sha256 and sha256_file(path) != spec.sha256:
                raise InputError(path, f"sha256 differs from manifest {self.name}")
        table = load_params_table(root / self.params_file, n_columns=len(self.priors))
        if table.shape[0] != self.n_sims:
            raise InputError(root / self.params_file, f"{table.shape[0]} parameter rows, but the maps hold "
                             f"{self.n_sims} simulations ({self.n_sims * self.maps_per_sim} maps / "
                             f"{self.maps_per_sim})")


def npy_header(path: Path) -> tuple[tuple[int, ...], str]:
    """Shape and dtype of a ``.npy`` file from its header alone (no data read)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with open(path, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            offset = fh.tell()
    except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt file
        raise InputError(path, f"not a valid .npy file ({err})") from None
    if dtype.hasobject:
        raise InputError(path, "holds Python objects (dtype object), which cannot be memory-mapped; save the maps "
                               "as a numeric array, e.g. np.save(path, maps.astype(np.float32))")
    if dtype.kind not in "fiu" or dtype.fields is not None:
        raise InputError(path, f"holds {dtype} values, not real numbers; save the maps as float32")
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size
    if size < expected:
        raise InputError(path, f"truncated: {size} bytes on disk, header promises {expected}")
    if fortran:
        raise InputError(path, "Fortran-ordered arrays are not supported; save with C order")
    return tuple(int(s) for s in shape), np.dtype(dtype).name


def load_params_table(path: Path, n_columns: int = len(CMD_PARAM_NAMES)) -> np.ndarray:
    """Read ``params_{set}_{suite}.txt`` as ``(n_sims, n_columns)`` float64, validated."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "parameter file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = np.loadtxt(path, ndmin=2)
    except ValueError as err:
        raise InputError(path, f"unreadable parameter table ({str(err).splitlines()[0]})") from None
    if table.size == 0:
        raise InputError(path, "parameter table is empty")
    if table.shape[1] != n_columns:
        raise InputError(path, f"parameter table has {table.shape[1]} columns, expected {n_columns} "
                         f"({', '.join(CMD_PARAM_NAMES) if n_columns == 6 else 'per manifest'})")
    bad = ~np.isfinite(table)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise InputError(path, f"non-finite value at row {row}, column {col}")
    return table


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def infer_manifest(root, suite: str, set_: str, fields: Sequence[str]) -> Manifest:
    """Manifest from CMD naming and the standard CAMELS LH priors (with a warning)."""
    msg = (f"no manifest for suite {suite!r} set {set_!r} in {root}: inferring one from the CMD file names "
           f"and the standard CAMELS {set_} priors")
    warnings.warn(msg, stacklevel=2)
    log.warning(msg)
    return Manifest.for_folder(root, suite, set_, fields, standard_priors(suite), name=f"inferred_{suite}_{set_}")


def find_manifest(root, suite: str, set_: str, fields: Sequence[str], manifest: str | None = None) -> Manifest:
    """The manifest for ``(root, suite, set)``.

    Order: an explicit ``manifest`` path; ``root/manifest_{suite}.yaml`` or ``root/manifest.yaml``
    (written by ``cosmoinfer-simulate``); a shipped manifest in ``data_manifests/`` with the same
    suite and set; else one inferred from the file names and the standard priors, with a warning.
    """
    if manifest:
        return Manifest.load(manifest)
    root = Path(root)
    for cand in (root / f"manifest_{suite}.yaml", root / "manifest.yaml"):
        if cand.is_file():
            m = Manifest.load(cand)
            if m.suite == suite and m.set == set_:
                return m
    for cand in sorted(MANIFEST_DIR.glob("*.yaml")):
        try:
            d = yaml.safe_load(cand.read_text())
        except yaml.YAMLError:
            continue
        if isinstance(d, dict) and d.get("suite") == suite and d.get("set", "LH") == set_ and \
                not d.get("extra", {}).get("synthetic", False):
            return Manifest.from_dict(d, str(cand))
    return infer_manifest(root, suite, set_, fields)
