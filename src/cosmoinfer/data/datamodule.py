"""LightningDataModule for CMD-layout folders and the HDF5 store.

Split by simulation (seeded, written to ``split.json`` next to the run and reusable), maps
normalised with statistics from the training split alone, parameters scaled to the unit cube
by the manifest's priors, dihedral augmentation on the fly for training, deterministic order for
evaluation. The training order and augmentation views depend only on ``(seed, epoch)``
(:class:`~cosmoinfer.data.samplers.EpochSampler`), so a resumed run repeats the uninterrupted one;
under DDP it shards the training set like a ``DistributedSampler``, and validation and test are
sharded *without padding*, so every sample is evaluated exactly once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from cosmoinfer.data.map_dataset import MapDataset
from cosmoinfer.data.meta import DataMeta
from cosmoinfer.data.param_checks import check_unique
from cosmoinfer.data.priors import Prior, from_unit, select
from cosmoinfer.data.samplers import EpochSampler, ShardSampler
from cosmoinfer.data.sources import open_source
from cosmoinfer.data.splits import SPLITS, load_split, map_indices, save_split, split_by_simulation
from cosmoinfer.data.transforms import Normalizer, fit_normalizer
from cosmoinfer.data.validate import check_maps
from cosmoinfer.errors import InputError

log = logging.getLogger(__name__)


class CMDDataModule(pl.LightningDataModule):
    """Data for training and evaluation. Arguments mirror the ``data`` config group.

    ``normalizer`` and ``split`` (dicts, as stored in a checkpoint) reuse a training run's
    statistics and split instead of computing new ones. ``seed`` (the training run's ``seed``) fixes
    the training order and augmentation of every epoch.
    """

    def __init__(self, root: str | None = None, suite: str = "IllustrisTNG", fields: Sequence[str] = ("Mtot",),
                 params: Sequence[str] = ("Omega_m", "sigma_8"), set: str = "LH", manifest: str | None = None,
                 h5_path: str | None = None, split_fractions: Sequence[float] = (0.9, 0.05, 0.05),
                 split_seed: int = 0, split_file: str | None = None, log_fields: str | Sequence[str] = "auto",
                 log_offset: dict | None = None, batch_size: int = 32, eval_batch_size: int | None = None,
                 num_workers: int = 0, augment: bool = True, pin_memory: bool = False,
                 out_dir: str | None = None, normalizer: dict | None = None, split: dict | None = None,
                 validate: str = "all", persistent_workers: bool = True, seed: int = 0, **_ignored):
        super().__init__()
        self.root, self.suite, self.set = root, suite, set
        self.fields = [fields] if isinstance(fields, str) else list(fields)  # data.fields=Mtot: one field
        self.param_names = [params] if isinstance(params, str) else list(params)
        self.manifest, self.h5_path = manifest, h5_path
        self.split_fractions, self.split_seed, self.split_file = list(split_fractions), split_seed, split_file
        self.log_fields, self.log_offset = log_fields, dict(log_offset or {})
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        if not self.param_names:
            raise InputError("data.params", "is empty; name the parameters to infer, e.g. [Omega_m, sigma_8]")
        check_unique(self.fields, "data.fields")
        check_unique(self.param_names, "data.params")
        for key, value in (("data.batch_size", self.batch_size), ("data.eval_batch_size", self.eval_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(key, f"must be a positive integer, got {value!r}")
        self.num_workers, self.augment, self.pin_memory = num_workers, augment, pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.out_dir = out_dir
        self.seed = int(seed)
        self.validate = validate
        self.normalizer = Normalizer.from_dict(normalizer) if normalizer else None
        self.split = split
        self.source = None
        self.datasets: dict[str, MapDataset] = {}

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        if self.source is not None:
            return
        src = self._open_source()
        self.source = src
        where = getattr(src, "manifest", None)
        where = (where.path if where is not None and where.path else None) or getattr(src, "path", None) or src.root
        try:
            self.priors: list[Prior] = select(src.priors, self.param_names)
        except KeyError as err:
            raise InputError(where, f"data.params: {err.args[0]}") from None
        self.param_columns = [src.param_names.index(n) for n in self.param_names]
        n_sims = len(src.params)
        if self.split is None:
            if self.split_file:
                self.split = load_split(self.split_file, n_sims)
            else:
                self.split = split_by_simulation(n_sims, self.split_fractions, self.split_seed)
        if max(max(self.split[k], default=-1) for k in SPLITS) >= n_sims:
            raise InputError(where, f"the split refers to simulations beyond the {n_sims} in the data")
        if stage == "fit" and not self.split["val"]:
            raise InputError(where, f"the validation split is empty ({n_sims} simulations, data.split_fractions="
                             f"{self.split.get('fractions')}); use more simulations or change data.split_fractions")
        idx = {k: map_indices(self.split[k], src.maps_per_sim) for k in SPLITS}
        if self.normalizer is None:
            log_flags = self._log_flags(src)
            offsets = [float(self.log_offset.get(f, 0.0)) for f in self.fields]
            check = None if self.validate == "all" else idx["train"]
            self.normalizer = fit_normalizer(src, idx["train"], log_flags, offsets, check_indices=check)
        elif len(self.normalizer.mean) != len(self.fields):
            raise InputError(where, f"checkpoint normalisation has {len(self.normalizer.mean)} channels, "
                             f"data.fields has {len(self.fields)}")
        idx["all"] = np.arange(src.n_maps)
        for k, ind in idx.items():
            self.datasets[k] = MapDataset(src, ind, self.normalizer, self.param_columns, self.priors,
                                          augment=self.augment and k == "train")
        if self.out_dir:  # only once every map and the split have passed validation: no partial output
            save_split(self.split, Path(self.out_dir) / "split.json")

    def _open_source(self):
        """The map source (subclasses may combine several, see :mod:`cosmoinfer.data.classification`)."""
        return open_source(self.root, self.suite, self.fields, self.set, self.manifest, self.h5_path)

    def _log_flags(self, src) -> list[bool]:
        if self.log_fields == "auto" or self.log_fields is None:
            return [bool(p) for p in src.positive]
        unknown = [f for f in self.log_fields if f not in self.fields]
        if unknown:
            raise InputError("data.log_fields", f"field(s) {unknown} are not in data.fields {self.fields}")
        return [f in self.log_fields for f in self.fields]

    # ------------------------------------------------------------------ loaders
    def _loader(self, ds, batch_size, train: bool) -> DataLoader:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if train:  # order and dihedral views from (seed, epoch) alone, sharded under DDP
            sampler = EpochSampler(len(ds), self.seed, augment=ds.augment)
        else:
            sampler = ShardSampler(len(ds)) if distributed else None
        return DataLoader(ds, batch_size=batch_size, shuffle=False, sampler=sampler,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers,
                          drop_last=train and len(ds) > batch_size)  # BatchNorm needs batches of > 1

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["train"], self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["val"], self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["test"], self.eval_batch_size, train=False)

    def _split_dataset(self, split: str) -> MapDataset:
        if split not in self.datasets:
            raise InputError("split", f"unknown split {split!r}; choose one of {list(SPLITS) + ['all']}")
        return self.datasets[split]

    def split_dataloader(self, split: str) -> DataLoader:
        return self._loader(self._split_dataset(split), self.eval_batch_size, train=False)

    def checked_batches(self, split: str, expected_hw: tuple[int, int] | None = None) -> Iterator[tuple]:
        """Batches ``(x, y, sim_id)`` of ``split`` in evaluation order, each map checked before it is normalised.

        The maps are read in physical units and go through :func:`cosmoinfer.data.validate.check_maps`
        (NaN/inf pixels, non-positive values in a log10-transformed field, a map size other than
        ``expected_hw``, maps far outside the range of the training maps), then are normalised. The
        first bad map raises :class:`InputError` naming its file (the CMD ``.npy`` file of the field,
        or the HDF5 store), its index there and the field. ``cosmoinfer-evaluate`` predicts from
        these: its checkpoint brings the normalisation, so :meth:`setup` runs no validation pass.
        """
        ds = self._split_dataset(split)
        raw = MapDataset(self.source, ds.indices, None, self.param_columns, self.priors)
        loader = self._loader(raw, self.eval_batch_size, train=False)
        where = str(self.h5_path or self.root or "data")
        source_locate = getattr(self.source, "locate", None) or (lambda i, c: (where, i))

        def batches():
            for x, y, sim, idx in loader:
                def locate(k: int, c: int, idx=idx.numpy()) -> tuple:
                    return source_locate(int(idx[k]), c)

                z = check_maps(x.numpy(), self.normalizer, expected_hw=expected_hw, where=where, fields=self.fields,
                               locate=locate)
                yield torch.from_numpy(z), y, sim

        return batches()

    # ------------------------------------------------------------------ metadata for checkpoints
    def data_meta(self) -> DataMeta:
        """What a checkpoint must carry so evaluation needs nothing else (see :mod:`cosmoinfer.data.meta`)."""
        return DataMeta(
            fields=list(self.fields), param_names=list(self.param_names), priors=list(self.priors),
            normalizer=self.normalizer.to_dict(),
            split={k: self.split[k] for k in ("seed", "fractions", "n_sims", *SPLITS) if k in self.split},
            suite=self.suite, set=self.set, grid=int(self.source.grid), maps_per_sim=int(self.source.maps_per_sim),
            root=None if self.root is None else str(Path(self.root).resolve()),
            h5_path=None if self.h5_path is None else str(Path(self.h5_path).resolve()),
            manifest=self.manifest,
            simulator=dict(getattr(getattr(self.source, "manifest", None), "extra", {}) or {}).get("simulator"))

    def state(self) -> dict:
        """:meth:`data_meta` as the plain dict stored in checkpoints (``meta["data"]``)."""
        return self.data_meta().to_dict()

    def to_physical(self, y_unit: np.ndarray | torch.Tensor) -> np.ndarray:
        return from_unit(np.asarray(y_unit), self.priors)
