"""Checks on parameter tables and on the names a config lists.

:func:`check_params_table` holds every value of a parameter table ``(n_sims, n_columns)`` (the CMD
``params_{set}_{suite}.txt`` or an HDF5 store's ``params``) against the prior of its column, as the
manifest states it: finite, positive where the prior is log-uniform, and inside the prior box up to
:data:`REL_TOL` of the box's width (tables written with a few digits may round a bound outwards).
A value outside the box would be scaled to unit coordinates outside ``[0, 1]`` and train the network
on a target no posterior inside the prior can reach. The first bad value raises
:class:`~cosmoinfer.errors.InputError` naming the file, the row (simulation), the column and the
parameter.

:func:`check_unique` refuses a name listed twice (``data.fields``, ``data.params``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cosmoinfer.data.priors import Prior
from cosmoinfer.errors import InputError

#: Tolerance on the prior bounds, as a fraction of the prior's width (``high - low``).
REL_TOL = 1e-4


def _where(label: str, row: int, col: int, prior: Prior) -> str:
    return f"{label}row {row} (simulation {row}), column {col} ({prior.name})"


def check_params_table(table: np.ndarray, priors: Sequence[Prior], path, label: str = "",
                       manifest: str | None = None) -> None:
    """Refuse a parameter table with a value its column's prior excludes.

    Args:
        table: ``(n_sims, n_columns)`` parameters in physical units, columns in prior order.
        priors: one :class:`Prior` per column.
        path: the file named in the error.
        label: prefix for the location, e.g. ``"dataset 'params' "`` for an HDF5 store.
        manifest: where the priors come from, for the hint (a manifest path or name).

    Raises:
        InputError: ``<path>: row r (simulation r), column c (name): <what is wrong>``, one line.
    """
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != len(priors):
        raise InputError(path, f"{label}parameter table has shape {tuple(table.shape)}, expected (n_sims, "
                               f"{len(priors)}) for the parameters {[p.name for p in priors]}")
    source = f" (priors from {manifest})" if manifest else ""
    hint = "; fix the table, or state the data's priors in a manifest (data.manifest=path/to/manifest.yaml)"
    bad = ~np.isfinite(table)
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        raise InputError(path, f"{_where(label, r, c, priors[c])}: non-finite value {table[r, c]}; every parameter "
                               f"must be a finite number")
    for c, p in enumerate(priors):
        col = table[:, c]
        if p.log and (col <= 0).any():
            r = int(np.flatnonzero(col <= 0)[0])
            raise InputError(path, f"{_where(label, r, c, p)}: {col[r]:g} is not positive, but {p.name} has a "
                                   f"log-uniform prior [{p.low:g}, {p.high:g}]{source}{hint}")
        tol = REL_TOL * (p.high - p.low)
        out = (col < p.low - tol) | (col > p.high + tol)
        if out.any():
            r = int(np.flatnonzero(out)[0])
            dist = "log-uniform" if p.log else "uniform"
            raise InputError(path, f"{_where(label, r, c, p)}: {col[r]:g} lies outside its {dist} prior "
                                   f"[{p.low:g}, {p.high:g}]{source}{hint}")


def check_unique(names: Sequence[str], key: str) -> None:
    """Refuse a list that names something twice: ``InputError(key, "lists 'Mtot' twice ...")``."""
    seen: set = set()
    for n in names:
        if n in seen:
            raise InputError(key, f"lists {n!r} twice ({list(names)}); name each one once")
        seen.add(n)
