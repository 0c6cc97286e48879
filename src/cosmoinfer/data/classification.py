"""Which suite made this map? Data for a binary classifier over two CMD-layout suites.

:class:`SuiteClassificationDataModule` reads the same fields of two suites (e.g. ``SynthTNG`` and
``SynthSIMBA`` from ``cosmoinfer-simulate simulator=camels_like suites=[SynthTNG,SynthSIMBA]``, or
``IllustrisTNG`` and ``SIMBA`` from the CMD release) and serves every map with one target, the
label ``0`` (first suite) or ``1`` (second suite). Train it with the ``bernoulli`` head::

    cosmoinfer-train data=suite_classification loss=bernoulli data.root=data/suites
    cosmoinfer-train experiment=suite_classification

Everything else is :class:`~cosmoinfer.data.datamodule.CMDDataModule`: the split is by
simulation (each suite is split on its own with the same seed, so both classes appear in every
split and simulation ``s`` of the two suites, which in CAMELS share parameters and initial
conditions, lands in the same split), normalisation statistics come from the training maps of
both suites, maps are augmented with the 8 dihedral transforms.

Simulation ids run over the suites one after the other: ids ``0 .. n_0-1`` are the first
suite's simulations, ``n_0 .. n_0+n_1-1`` the second's (``sim_id`` in ``predictions.h5``).

The target is named ``is_{second suite}`` (e.g. ``is_SynthSIMBA``): the classifier's output is
the probability that a map comes from the second suite. Its "prior" is the unit interval, so the
unit-cube scaling of the regression targets leaves the label unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from cosmoinfer.data.datamodule import CMDDataModule
from cosmoinfer.data.meta import DataMeta
from cosmoinfer.data.priors import Prior
from cosmoinfer.data.sources import CMDSource
from cosmoinfer.data.splits import SPLITS, split_by_simulation
from cosmoinfer.errors import InputError

#: ``meta["data"]["datamodule"]`` of checkpoints trained on this data (the evaluator reads it).
KIND = "suite_classification"


def label_name(suites: Sequence[str]) -> str:
    """Name of the binary target: ``is_{second suite}``."""
    return f"is_{suites[1]}"


class SuiteSource:
    """Several CMD-layout sources of the same fields, one after the other, with a class label.

    Same interface as :class:`~cosmoinfer.data.sources.CMDSource`: ``n_maps``, ``grid``,
    ``fields``, ``maps_per_sim``, ``positive``, ``params (n_sims, 1)`` (the label of each
    simulation: the index of its suite), ``param_names``, ``priors`` and ``read`` / ``read_one``
    of maps in physical units.
    """

    def __init__(self, sources: Sequence[CMDSource], name: str):
        self.sources = list(sources)
        first = self.sources[0]
        for s in self.sources[1:]:
            for attr in ("grid", "maps_per_sim"):
                if getattr(s, attr) != getattr(first, attr):
                    raise InputError(s.paths[0], f"suite {s.suite} has {attr}={getattr(s, attr)} but suite "
                                     f"{first.suite} has {getattr(first, attr)}; the suites must have maps "
                                     "of the same size and layout")
        self.fields = list(first.fields)
        self.grid, self.maps_per_sim = first.grid, first.maps_per_sim
        self.root = first.root
        self.suites = [s.suite for s in self.sources]
        # a field is log10-transformed only if it is positive in every suite
        self.positive = [all(s.positive[c] for s in self.sources) for c in range(len(self.fields))]
        self.n_sims = [len(s.params) for s in self.sources]
        self.params = np.concatenate([np.full((n, 1), float(k)) for k, n in enumerate(self.n_sims)])
        self.param_names = [name]
        self.priors = [Prior(name, 0.0, 1.0)]
        self.map_offsets = np.cumsum([0] + [s.n_maps for s in self.sources])
        self.sim_offsets = np.cumsum([0] + self.n_sims)
        self.n_maps = int(self.map_offsets[-1])

    def _locate(self, i: int) -> tuple[int, int]:
        k = int(np.searchsorted(self.map_offsets, i, side="right") - 1)
        return k, int(i - self.map_offsets[k])

    def read(self, i0: int, i1: int) -> np.ndarray:
        """Maps ``i0:i1`` as ``(n, C, H, W)`` float32 (a block may span the suites)."""
        parts = []
        for k, s in enumerate(self.sources):
            lo, hi = max(i0, self.map_offsets[k]), min(i1, self.map_offsets[k + 1])
            if hi > lo:
                parts.append(s.read(int(lo - self.map_offsets[k]), int(hi - self.map_offsets[k])))
        if not parts:
            return np.empty((0, len(self.fields), self.grid, self.grid), dtype=np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def read_one(self, i: int) -> np.ndarray:
        k, j = self._locate(i)
        return self.sources[k].read_one(j)

    def describe(self, i: int) -> str:
        k, j = self._locate(i)
        return self.sources[k].describe(j)

    def file_of(self, channel: int) -> Path:
        return self.sources[0].file_of(channel)

    def locate(self, i: int, channel: int) -> tuple[Path, int]:
        """The suite's file holding map ``i`` of field ``channel``, and the map's index in that file."""
        k, j = self._locate(i)
        return self.sources[k].locate(j, channel)


class SuiteClassificationDataModule(CMDDataModule):
    """Maps of two suites with the label 0 / 1 (which suite) as the single target.

    Args:
        suites: the two suite names, label 0 then label 1.
        root: folder holding both suites' CMD-layout files; ``roots`` (one folder per suite)
            instead when they live apart.
        label: name of the target (default ``is_{suites[1]}``).
        Other arguments as :class:`CMDDataModule` (``params``, ``manifest`` and ``h5_path`` do not
        apply: each suite's manifest is found as for a single suite).
    """

    def __init__(self, suites: Sequence[str] = ("SynthTNG", "SynthSIMBA"), root: str | None = None,
                 roots: Sequence[str] | None = None, label: str | None = None, **kwargs):
        suites = [str(s) for s in (suites or [])]
        if len(suites) != 2 or suites[0] == suites[1]:
            raise InputError("data.suites", f"name two different suites (label 0, label 1), got {suites}")
        if roots is not None and len(roots) != 2:
            raise InputError("data.roots", f"give one folder per suite, got {list(roots)}")
        if kwargs.get("h5_path"):
            raise InputError("data.h5_path", "suite classification reads CMD-layout folders; set data.root")
        kwargs.pop("params", None)
        kwargs.pop("suite", None)
        self.suites = suites
        self.roots = [str(r) for r in roots] if roots is not None else None
        self.label = label or label_name(suites)
        super().__init__(root=root, suite="+".join(suites), params=[self.label], **kwargs)

    def _open_source(self) -> SuiteSource:
        roots = self.roots or [self.root, self.root]
        if any(not r for r in roots):
            raise InputError("data.root", "data.root is not set; point it at the folder holding both suites")
        sources = [CMDSource(r, s, self.fields, self.set, None) for r, s in zip(roots, self.suites)]
        src = SuiteSource(sources, self.label)
        if self.split is None and not self.split_file:
            self.split = self._stratified_split(src)
        return src

    def _stratified_split(self, src: SuiteSource) -> dict:
        """Each suite split by simulation with the same seed; ids offset to the combined numbering."""
        parts = [split_by_simulation(n, self.split_fractions, self.split_seed) for n in src.n_sims]
        split = {"seed": int(self.split_seed), "fractions": parts[0]["fractions"], "n_sims": int(sum(src.n_sims))}
        for k in SPLITS:
            split[k] = sorted(int(i + off) for p, off in zip(parts, src.sim_offsets) for i in p[k])
        return split

    def data_meta(self) -> DataMeta:
        meta = super().data_meta()
        meta.datamodule, meta.suites, meta.label = KIND, list(self.suites), self.label
        meta.roots = None if self.roots is None else [str(Path(r).resolve()) for r in self.roots]
        meta.n_sims_per_suite = list(self.source.n_sims)
        return meta
