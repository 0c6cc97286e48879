"""DataMeta: the checkpoint's ``meta["data"]`` as one typed record that reads and writes today's dict."""

from __future__ import annotations

import copy

import pytest

from cosmoinfer.data.datamodule import CMDDataModule
from cosmoinfer.data.meta import DataMeta
from cosmoinfer.data.priors import Prior

#: ``meta["data"]`` as a checkpoint of an earlier release stores it (no ``maps_per_sim``, ``simulator``).
OLD = {
    "fields": ["Mtot"], "param_names": ["Omega_m", "sigma_8"],
    "priors": [{"name": "Omega_m", "low": 0.1, "high": 0.5, "distribution": "uniform"},
               {"name": "sigma_8", "low": 0.6, "high": 1.0, "distribution": "uniform"}],
    "normalizer": {"log": [True], "offset": [0.0], "mean": [10.5], "std": [0.25]},
    "split": {"seed": 0, "fractions": [0.6, 0.2, 0.2], "n_sims": 5, "train": [0, 3, 4], "val": [1], "test": [2]},
    "suite": "TestSuite", "set": "LH", "grid": 16, "root": "/data/cmd", "h5_path": None, "manifest": None,
}

CLASSIFIER = {  # in the order the suite classifier's data module writes it, plus a key of a later release
    "fields": ["Mtot"], "param_names": ["is_B"],
    "priors": [{"name": "is_B", "low": 0.0, "high": 1.0, "distribution": "uniform"}],
    "normalizer": OLD["normalizer"], "split": OLD["split"], "suite": "A+B", "set": "LH", "grid": 16,
    "maps_per_sim": 15, "root": "/data", "h5_path": None, "manifest": None,
    "simulator": {"name": "camels_like", "grid": 16},
    "datamodule": "suite_classification", "suites": ["A", "B"], "label": "is_B", "roots": None,
    "n_sims_per_suite": [3, 2], "some_future_key": {"x": 1},
}


@pytest.mark.parametrize("d", [OLD, CLASSIFIER], ids=["older_checkpoint", "suite_classifier"])
def test_round_trip_is_exact(d):
    keep = copy.deepcopy(d)
    meta = DataMeta.from_dict(d)
    assert meta.to_dict() == keep and list(meta.to_dict()) == list(keep)
    assert d == keep  # the input is not changed
    assert meta.priors[0] == Prior.from_dict(keep["priors"][0])


def test_typed_reads():
    meta = DataMeta.from_dict(CLASSIFIER)
    assert meta.is_suite_classifier and meta.simulator_name == "camels_like"
    assert meta.log_flags == [True] and meta.normalization.mean.tolist() == [10.5]
    assert meta.split_ids() == {"train": [0, 3, 4], "val": [1], "test": [2]}
    old = DataMeta.from_dict(OLD)
    assert not old.is_suite_classifier and old.simulator_name is None and old.maps_per_sim is None
    assert DataMeta.coerce({"data": OLD, "model": {}}).to_dict() == OLD and DataMeta.coerce(old) is old
    with pytest.raises(KeyError, match="normalizer"):
        DataMeta.from_dict({k: v for k, v in OLD.items() if k != "normalizer"})


def test_a_datamodule_writes_what_it_reads(cmd_folder):
    dm = CMDDataModule(root=str(cmd_folder), suite="TestSuite", fields=["Mtot", "Mgas"],
                       split_fractions=[0.6, 0.2, 0.2], validate="train")
    dm.setup("fit")
    state = dm.state()
    assert list(state) == ["fields", "param_names", "priors", "normalizer", "split", "suite", "set", "grid",
                           "maps_per_sim", "root", "h5_path", "manifest", "simulator"]
    assert DataMeta.from_dict(copy.deepcopy(state)).to_dict() == state
    assert dm.data_meta().priors == dm.priors
