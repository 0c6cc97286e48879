"""The data half of a checkpoint's metadata (``meta["data"]``) as one typed record.

Every checkpoint carries what evaluation needs to rebuild its data without the training config:
fields, parameters and their priors, the normalisation statistics of the training split, the split
itself, where the maps came from and which simulator made them. :class:`DataMeta` is that record;
:meth:`DataMeta.to_dict` writes, and :meth:`DataMeta.from_dict` reads, exactly the plain dict stored
in checkpoints (so checkpoints written before this class existed load unchanged, and
``DataMeta.from_dict(d).to_dict() == d``). Written by
:meth:`cosmoinfer.data.datamodule.CMDDataModule.data_meta`, read by the evaluator, the predictor and
the checkpoint loader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cosmoinfer.data.priors import Prior
from cosmoinfer.data.transforms import Normalizer

#: Keys every data module writes, in the order it writes them.
BASE_KEYS = ("fields", "param_names", "priors", "normalizer", "split", "suite", "set", "grid", "maps_per_sim",
             "root", "h5_path", "manifest", "simulator")
#: Keys the suite classifier's data module adds (:mod:`cosmoinfer.data.classification`).
CLASSIFICATION_KEYS = ("datamodule", "suites", "label", "roots", "n_sims_per_suite")
#: Keys a reader cannot do without.
REQUIRED_KEYS = ("fields", "param_names", "priors", "normalizer")


@dataclass
class DataMeta:
    """What a checkpoint records about its training data (``meta["data"]``).

    ``fields``/``param_names``: channel and target names; ``priors``: one :class:`Prior` per
    parameter; ``normalizer``: the training split's statistics as stored (``log``, ``offset``,
    ``mean``, ``std``, lists of length ``C``; :attr:`normalization` gives the :class:`Normalizer`);
    ``split``: ``{"seed", "fractions", "n_sims", "train", "val", "test"}`` (simulation ids);
    ``suite``/``set``/``grid``/``maps_per_sim``: the data's layout; ``root``/``h5_path`` (absolute
    paths) and ``manifest``: where the maps were read; ``simulator``: the manifest's simulator
    config (``{"name": "grf", ...}``) for synthetic data, else ``None``. The suite classifier also
    stores ``datamodule`` (``"suite_classification"``), ``suites``, ``label``, ``roots`` and
    ``n_sims_per_suite``. Keys this class does not know are kept in ``extra``; keys an older
    checkpoint lacks are remembered in ``absent`` and not written back.
    """

    fields: list[str]
    param_names: list[str]
    priors: list[Prior]
    normalizer: dict
    split: dict | None = None
    suite: str | None = None
    set: str | None = None
    grid: int | None = None
    maps_per_sim: int | None = None
    root: str | None = None
    h5_path: str | None = None
    manifest: str | None = None
    simulator: dict | None = None
    datamodule: str | None = None
    suites: list[str] | None = None
    label: str | None = None
    roots: list[str] | None = None
    n_sims_per_suite: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    absent: frozenset = frozenset()

    # ------------------------------------------------------------------ derived
    @property
    def normalization(self) -> Normalizer:
        return Normalizer.from_dict(self.normalizer)

    @property
    def log_flags(self) -> list[bool]:
        """Which fields are log10-transformed, ``(C,)``."""
        return [bool(x) for x in self.normalizer["log"]]

    @property
    def simulator_name(self) -> str | None:
        """The simulator that made the training maps (``"grf"``, ``"camels_like"``), or ``None``."""
        return self.simulator.get("name") if isinstance(self.simulator, dict) else None

    @property
    def is_suite_classifier(self) -> bool:
        return self.datamodule == "suite_classification"

    def split_ids(self) -> dict[str, list[int]]:
        """``{"train", "val", "test"}`` -> simulation ids, sorted (missing parts empty)."""
        return split_ids(self.split)

    # ------------------------------------------------------------------ plain data
    def to_dict(self) -> dict:
        """The plain dict stored in checkpoints (``meta["data"]``)."""
        keys = BASE_KEYS + (CLASSIFICATION_KEYS if self.datamodule is not None else ())
        out: dict = {}
        for k in keys:
            if k in self.absent:
                continue
            v = getattr(self, k)
            out[k] = [p.to_dict() for p in v] if k == "priors" else v
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "DataMeta":
        """Read ``meta["data"]``; ``KeyError`` names a missing required key."""
        missing = [k for k in REQUIRED_KEYS if k not in d]
        if missing:
            raise KeyError(f"checkpoint data metadata lacks {missing}")
        known = BASE_KEYS + CLASSIFICATION_KEYS
        kwargs = {k: d[k] for k in known if k in d}
        kwargs["fields"] = list(d["fields"])
        kwargs["param_names"] = list(d["param_names"])
        kwargs["priors"] = [Prior.from_dict(p) for p in d["priors"]]
        absent = frozenset(k for k in known if k not in d)
        return cls(**kwargs, extra={k: v for k, v in d.items() if k not in known}, absent=absent)

    @classmethod
    def coerce(cls, meta) -> "DataMeta":
        """A :class:`DataMeta` from itself, ``meta["data"]`` or a whole checkpoint ``meta``."""
        if isinstance(meta, cls):
            return meta
        if isinstance(meta, dict) and "data" in meta and "fields" not in meta:
            meta = meta["data"]
        return cls.from_dict(dict(meta))


def split_ids(split: dict | None) -> dict[str, list[int]]:
    """``{"train", "val", "test"}`` -> sorted simulation ids of a stored split dict."""
    split = split or {}
    return {k: sorted(int(i) for i in split.get(k) or []) for k in ("train", "val", "test")}
