"""Checks on maps handed to a trained network: the one place that refuses what it cannot handle.

:func:`check_maps` takes maps in physical units and the training run's :class:`Normalizer` and
returns the normalised maps, or raises :class:`~cosmoinfer.errors.InputError` naming the map, the
field and the problem. It is used by :meth:`cosmoinfer.uncertainty.predictor.Predictor.predict_maps`
(the Python API) and, batch by batch during the prediction pass, by ``cosmoinfer-evaluate``
(:meth:`cosmoinfer.data.datamodule.CMDDataModule.checked_batches`). Refused:

- a shape other than ``(N, C, H, W)`` (or ``(N, H, W)`` for one field), another number of fields
  ``C`` than the model was trained on, and another map size ``H x W`` than its training maps;
- NaN or inf pixels;
- in a field the training run log10-transformed, values with ``x + offset <= 0`` (such a field
  was strictly positive in training; maps that are already log10-transformed usually hit this);
- maps far outside the range of the training maps (e.g. maps already log10-transformed, or in other
  units): see :data:`MAX_ABS_MEAN`, :data:`MAX_STD` and :data:`MIN_STD`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from cosmoinfer.data.transforms import Normalizer
from cosmoinfer.errors import InputError

# Range of the normalised maps, per map and field, in units of the training maps' pooled std.
# After normalisation the training maps have pooled mean 0 and pooled variance 1, and the pooled
# variance is the within-map variance plus the spread of the per-map means. So the per-map means of
# the training maps spread by at most 1 (fewer than 1 % of them can lie beyond +-10 for any data,
# by Chebyshev's inequality) and their per-map variances average at most 1. Measured with the
# simulators (32^2, 60 simulations; cosmoinfer-simulate grf with and without noise, camels_like
# Mtot/Mgas/T/Mstar of SynthTNG and SynthSIMBA, and SynthSIMBA with SynthTNG's normalisation, i.e.
# another suite): |per-map mean| <= 1.9 and per-map std within [0.27, 1.8]. The limits below keep
# a margin of 5x or more on every side, so genuine test maps are never refused, while maps that
# were log10-transformed before (|mean| ~ 17 for camels_like Mtot), constant maps (std 0) and maps
# with absurd pixel values are. Maps in other units pass unless the factor is large (camels_like
# Mtot in units 10^3 times off: |mean| 4 to 6, accepted; 10^6 times off: refused).
#: A map whose normalised mean lies further than this from 0 (training stds) is refused.
MAX_ABS_MEAN = 10.0
#: A map whose normalised pixel std exceeds this (100x the training variance) is refused.
MAX_STD = 10.0
#: A map whose normalised pixel std is below this (a constant or nearly constant map) is refused.
MIN_STD = 0.01


def _field(fields: Sequence[str] | None, c: int) -> str:
    return str(fields[c]) if fields is not None and c < len(fields) else f"#{c}"


def check_maps(maps, normalizer: Normalizer, expected_hw: tuple[int, int] | None = None, where: str = "maps",
               fields: Sequence[str] | None = None,
               locate: Callable[[int, int], tuple[object, int]] | None = None) -> np.ndarray:
    """Check maps in physical units against a trained model; return them normalised.

    Args:
        maps: ``(N, C, H, W)`` maps in physical units (``(N, H, W)`` when the model has one field);
            numpy array, torch tensor on the CPU or nested lists.
        normalizer: the training run's normalisation (its ``C`` channels define the field count).
        expected_hw: the training maps' ``(H, W)``; ``None`` skips the map-size check.
        where: the path named in errors (``"maps"`` for arrays handed to the Python API).
        fields: the field names, for the errors (default ``#0``, ``#1``, ...).
        locate: ``locate(k, c) -> (path, map index)`` names the file and the map index of map ``k``
            of this batch in field ``c`` (evaluation: the CMD ``.npy`` file or HDF5 store and the
            map's index in it); default ``(where, k)``.

    Returns:
        ``(N, C, H, W)`` float32 normalised maps (what the network takes).

    Raises:
        InputError: on the first problem: the path, ``map i (field F)`` and what is wrong, one line.
    """
    n_ch = len(normalizer.mean)
    names = [_field(fields, c) for c in range(n_ch)]
    try:
        x = np.asarray(maps, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise InputError(where, f"maps must be an array of numbers in physical units ({type(err).__name__}: "
                                f"{str(err)[:120]})") from None
    want = f"(N, {n_ch}, H, W)" + (" or (N, H, W)" if n_ch == 1 else "")
    if x.ndim == 3 and n_ch == 1:
        x = x[:, None]
    if x.ndim != 4:
        hint = (f"; one map of {n_ch} fields is (1, {n_ch}, H, W)" if x.ndim == 3 else "")
        raise InputError(where, f"expected {want} maps in physical units, got shape {tuple(x.shape)}{hint}")
    if x.shape[1] != n_ch:
        raise InputError(where, f"maps have {x.shape[1]} field(s) (shape {tuple(x.shape)}) but the model was trained "
                                f"on {n_ch}: {names}; pass {want} maps in physical units, fields in this order")
    if x.shape[0] == 0:
        raise InputError(where, "no maps given (N = 0)")
    h, w = x.shape[-2:]
    if expected_hw is not None and (h, w) != tuple(int(v) for v in expected_hw):
        eh, ew = (int(v) for v in expected_hw)
        raise InputError(where, f"maps are {h}x{w} pixels but the model was trained on {eh}x{ew} maps; "
                                f"crop or resample them to {eh}x{ew}")

    def name(k: int, c: int) -> tuple[object, str]:
        path, i = locate(k, c) if locate is not None else (where, k)
        return path, f"map {i} (field {names[c]})"

    # NaN / inf pixels (a single one makes the whole posterior NaN)
    finite = np.isfinite(x)
    if not finite.all():
        bad = ~finite.all(axis=(2, 3))
        k, c = (int(v) for v in np.argwhere(bad)[0])
        n_nan, n_inf = int(np.isnan(x[k, c]).sum()), int(np.isinf(x[k, c]).sum())
        what = " and ".join(f"{n} {s} pixel{'s' if n > 1 else ''}" for n, s in ((n_nan, "NaN"), (n_inf, "inf")) if n)
        path, label = name(k, c)
        raise InputError(path, f"{label} holds {what}; every pixel must be finite")
    # log10-transformed fields were strictly positive (after the offset) in training
    for c in np.flatnonzero(normalizer.log):
        off = float(normalizer.offset[c])
        low = (x[:, c] + np.float32(off)).min(axis=(1, 2))
        if (low <= 0).any():
            k = int(np.flatnonzero(low <= 0)[0])
            path, label = name(k, int(c))
            cond = f"x + {off:g} > 0" if off else "strictly positive"
            raise InputError(path, f"{label} has non-positive values (min {float(x[k, c].min()):.3g}) but the model "
                                   f"log10-transforms this field, which was {cond} in training; pass maps in "
                                   f"physical units (not already log10-transformed)")
    z = normalizer(x)
    mean = z.mean(axis=(2, 3), dtype=np.float64)
    std = z.std(axis=(2, 3), dtype=np.float64)
    for bad, what in ((np.abs(mean) > MAX_ABS_MEAN, "mean"), (std > MAX_STD, "high"), (std < MIN_STD, "low")):
        if not bad.any():
            continue
        k, c = (int(v) for v in np.argwhere(bad)[0])
        path, label = name(k, c)
        hint = ("; were the maps already log10-transformed? pass them in physical units" if normalizer.log[c]
                else "; are they in the physical units of the training maps?")
        if what == "mean":
            msg = (f"is far outside the range of the training maps: its mean is {mean[k, c]:+.3g} training stds "
                   f"from theirs (limit {MAX_ABS_MEAN:g})")
        elif what == "high":
            msg = (f"varies far more than the training maps: pixel std {std[k, c]:.3g} training stds "
                   f"(limit {MAX_STD:g})")
        else:
            msg = (f"is {'constant' if std[k, c] == 0 else 'nearly constant'}: pixel std {std[k, c]:.3g} training "
                   f"stds (limit {MIN_STD:g})")
            hint = "; a genuine map varies from pixel to pixel" + hint
        raise InputError(path, f"{label} {msg}{hint}")
    return z
