"""Data layer: CMD reader, manifests, HDF5 store, splits, normalisation, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cosmoinfer.data.datamodule import CMDDataModule
from cosmoinfer.data.hdf5 import convert_to_hdf5
from cosmoinfer.data.manifest import Manifest, find_manifest, maps_filename, params_filename
from cosmoinfer.data.priors import Prior, from_unit, gaussian_to_physical, sample, standard_priors, to_unit
from cosmoinfer.data.sources import CMDSource, H5Source
from cosmoinfer.data.splits import map_indices, split_by_simulation
from cosmoinfer.data.transforms import dihedral
from cosmoinfer.errors import InputError

from .conftest import write_cmd_folder


def make_dm(root, **kw):
    args = dict(root=str(root), suite="TestSuite", fields=["Mtot"], params=["Omega_m", "sigma_8"],
                split_fractions=[0.5, 0.25, 0.25], batch_size=8)
    args.update(kw)
    dm = CMDDataModule(**args)
    dm.setup()
    return dm


def test_reader_is_memory_mapped_and_maps_follow_sims(cmd_folder):
    with pytest.warns(UserWarning, match="inferring"):
        src = CMDSource(cmd_folder, "TestSuite", ["Mtot", "Mgas"])
    mm = src._open()
    assert all(isinstance(m, np.memmap) for m in mm)
    assert src.n_maps == 180 and src.grid == 16 and src.params.shape == (12, 6)
    raw = np.load(cmd_folder / maps_filename("Mgas", "TestSuite", "LH"))
    np.testing.assert_array_equal(src.read_one(31)[1], raw[31])
    np.testing.assert_array_equal(src.read(30, 45)[:, 1], raw[30:45])


def test_manifest_round_trip_and_validation(cmd_folder, tmp_path):
    m = Manifest.for_folder(cmd_folder, "TestSuite", "LH", ["Mtot", "Mgas"], standard_priors(), name="t",
                            with_sha256=True)
    path = m.save(cmd_folder / "manifest_TestSuite.yaml")
    m2 = find_manifest(cmd_folder, "TestSuite", "LH", ["Mtot"])
    assert m2.to_dict() == m.to_dict() and m2.path == str(path)
    m2.validate(cmd_folder)
    # manifest mismatch: a shape that disagrees
    d = m.to_dict()
    d["fields"]["Mtot"]["shape"] = [150, 16, 16]
    with pytest.raises(InputError, match="shape"):
        Manifest.from_dict(d, "m.yaml").validate(cmd_folder)
    # sha256 mismatch
    d = m.to_dict()
    d["fields"]["Mtot"]["sha256"] = "0" * 64
    with pytest.raises(InputError, match="sha256"):
        Manifest.from_dict(d, "m.yaml").validate(cmd_folder)


def test_shipped_manifests_load():
    from cosmoinfer.data.manifest import MANIFEST_DIR

    names = {p.stem for p in MANIFEST_DIR.glob("*.yaml")}
    assert {"cmd_IllustrisTNG_LH", "cmd_SIMBA_LH", "cmd_Astrid_LH"} <= names
    astrid = Manifest.load(MANIFEST_DIR / "cmd_Astrid_LH.yaml")
    tng = Manifest.load(MANIFEST_DIR / "cmd_IllustrisTNG_LH.yaml")
    assert astrid.priors[5].low == 0.25 and tng.priors[5].low == 0.5
    assert [p.name for p in tng.priors] == ["Omega_m", "sigma_8", "A_SN1", "A_AGN1", "A_SN2", "A_AGN2"]
    for p in MANIFEST_DIR.glob("*.yaml"):
        Manifest.load(p)


def test_split_by_simulation_is_disjoint_seeded_and_reusable(cmd_folder, tmp_path):
    s = split_by_simulation(100, (0.9, 0.05, 0.05), seed=3)
    sets = [set(s[k]) for k in ("train", "val", "test")]
    assert sum(map(len, sets)) == 100 and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert s == split_by_simulation(100, (0.9, 0.05, 0.05), seed=3)
    assert s != split_by_simulation(100, (0.9, 0.05, 0.05), seed=4)
    idx = map_indices([2, 5])
    assert idx.tolist() == list(range(30, 45)) + list(range(75, 90))
    out = tmp_path / "run"
    dm = make_dm(cmd_folder, out_dir=str(out))
    sims = {k: set(dm.datasets[k].indices // 15) for k in ("train", "val", "test")}
    assert not (sims["train"] & sims["val"] or sims["train"] & sims["test"] or sims["val"] & sims["test"])
    assert (out / "split.json").is_file()
    dm2 = make_dm(cmd_folder, split_file=str(out / "split.json"), split_seed=99)
    for k in ("train", "val", "test"):
        np.testing.assert_array_equal(dm.datasets[k].indices, dm2.datasets[k].indices)


def test_normalisation_uses_training_maps_only(cmd_folder):
    dm = make_dm(cmd_folder)
    raw = np.load(cmd_folder / maps_filename("Mtot", "TestSuite", "LH"))
    lg = np.log10(raw.astype(np.float64))
    tr = dm.datasets["train"].indices
    assert dm.normalizer.log[0]
    np.testing.assert_allclose(dm.normalizer.mean[0], lg[tr].mean(), rtol=1e-6)
    np.testing.assert_allclose(dm.normalizer.std[0], lg[tr].std(), rtol=1e-5)
    assert not np.isclose(dm.normalizer.mean[0], lg.mean(), rtol=1e-4)  # all-maps statistics differ
    x, y, sim = dm.datasets["train"][0]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32
    # amplitude is kept: maps are not standardised one by one
    stds = [float(dm.datasets["train"][i][0].std()) for i in range(0, 90, 15)]
    assert np.ptp(stds) > 0.1


def test_parameter_transform_round_trip():
    priors = standard_priors("Astrid")
    rng = np.random.default_rng(0)
    theta = sample(priors, 500, rng)
    u = to_unit(theta, priors)
    assert (u >= 0).all() and (u <= 1).all()
    np.testing.assert_allclose(from_unit(u, priors), theta, rtol=1e-12)
    # log-uniform parameters are uniform in log space: their unit coordinates are ~U(0,1)
    assert abs(u[:, 3].mean() - 0.5) < 4 * np.sqrt(1 / 12 / 500)
    # Gaussian moments map exactly through the log transform (Monte Carlo check)
    p = [Prior("A", 0.25, 4.0, log=True)]
    m, v = gaussian_to_physical(np.array([0.4]), np.array([0.01]), p)
    draws = from_unit(rng.normal(0.4, 0.1, size=(200_000, 1)), p)
    assert abs(draws.mean() - m[0]) < 4 * draws.std() / np.sqrt(len(draws))
    np.testing.assert_allclose(draws.var(), v[0], rtol=0.03)


def test_dihedral_augmentation_keeps_labels_and_is_a_group(cmd_folder):
    x = torch.arange(16.0).reshape(1, 4, 4)
    outs = [dihedral(x, k) for k in range(8)]
    assert len({tuple(o.flatten().tolist()) for o in outs}) == 8
    for o in outs:
        assert sorted(o.flatten().tolist()) == sorted(x.flatten().tolist())
    dm = make_dm(cmd_folder)
    ds = dm.datasets["train"]
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        xa, ya, _ = ds[3]
        seen.add(tuple(xa.flatten()[:5].tolist()))
        np.testing.assert_array_equal(ya.numpy(), ds.sim_targets[ds.indices[3] // 15])
    assert len(seen) > 1
    assert not dm.datasets["val"].augment
    a, b = dm.datasets["val"][2][0], dm.datasets["val"][2][0]
    assert torch.equal(a, b)


def test_hdf5_round_trip_equals_cmd_source(cmd_folder, tmp_path):
    h5 = convert_to_hdf5(cmd_folder, "TestSuite", ["Mtot", "Mgas"], tmp_path / "store.h5", block=7)
    import h5py

    with h5py.File(h5) as f:
        assert f["maps"].chunks == (1, 2, 16, 16)
        assert f["sim_id"][31] == 2
    src = CMDSource(cmd_folder, "TestSuite", ["Mtot", "Mgas"])
    hs = H5Source(h5, ["Mgas"])
    np.testing.assert_array_equal(hs.read(0, 180)[:, 0], src.read(0, 180)[:, 1])
    np.testing.assert_array_equal(hs.params, src.params)
    dm_npy = make_dm(cmd_folder, fields=["Mgas"], augment=False)
    dm_h5 = make_dm(None, h5_path=str(h5), fields=["Mgas"], augment=False)
    np.testing.assert_array_equal(dm_npy.normalizer.mean, dm_h5.normalizer.mean)
    xa, ya, _ = next(iter(dm_npy.train_dataloader()))
    torch.manual_seed(0)
    batches_h5 = [b for b in dm_h5.val_dataloader()]
    batches_npy = [b for b in dm_npy.val_dataloader()]
    for bh, bn in zip(batches_h5, batches_npy):
        assert torch.equal(bh[0], bn[0]) and torch.equal(bh[1], bn[1])


def test_hdf5_store_with_workers(cmd_folder, tmp_path):
    h5 = convert_to_hdf5(cmd_folder, "TestSuite", ["Mtot"], tmp_path / "store.h5")
    dm = make_dm(None, h5_path=str(h5), num_workers=2, augment=True)
    n = sum(len(b[0]) for b in dm.train_dataloader())
    assert n == len(dm.datasets["train"]) // 8 * 8  # full batches of 8 (BatchNorm-safe drop_last)
    n = sum(len(b[0]) for b in dm.val_dataloader())
    assert n == len(dm.datasets["val"])  # evaluation sees every map


@pytest.mark.parametrize("case", ["nan", "negative", "count", "columns", "unknown_field", "unknown_param",
                                  "missing", "dtype", "truncated", "corrupt_h5", "params_nan"])
def test_bad_input_errors_name_file_and_problem(tmp_path, case):
    root = tmp_path / "bad"
    write_cmd_folder(root, n_sims=4, grid=8, fields=("Mtot",))
    mp = root / maps_filename("Mtot", "TestSuite", "LH")
    pp = root / params_filename("TestSuite", "LH")
    kw, expect = {}, None
    maps = np.load(mp)
    if case == "nan":
        maps[17, 2, 3] = np.nan
        np.save(mp, maps)
        expect = "map 17 .*NaN"
    elif case == "negative":
        maps[5, 0, 0] = -1.0
        np.save(mp, maps)
        expect = "map 5 .*non-positive"
    elif case == "count":
        np.save(mp, maps[:45])
        expect = "45 maps"
    elif case == "columns":
        np.savetxt(pp, np.loadtxt(pp)[:, :5])
        expect = "5 columns"
    elif case == "params_nan":
        t = np.loadtxt(pp)
        t[1, 1] = np.inf
        np.savetxt(pp, t)
        expect = "non-finite"
    elif case == "unknown_field":
        kw["fields"] = ["Mtot", "HI"]
        expect = "not found"
    elif case == "unknown_param":
        kw["params"] = ["Omega_m", "h"]
        expect = "unknown parameter"
    elif case == "missing":
        pp.unlink()
        expect = "not found"
    elif case == "dtype":
        np.save(mp, maps.astype(np.float64))
        Manifest.for_folder(root, "TestSuite", "LH", ["Mtot"], standard_priors(), name="m").save(
            root / "manifest_TestSuite.yaml")
        np.save(mp, maps.astype(np.float32))
        expect = "dtype is float32"
    elif case == "truncated":
        data = mp.read_bytes()
        mp.write_bytes(data[: len(data) // 2])
        expect = "truncated"
    elif case == "corrupt_h5":
        (tmp_path / "x.h5").write_bytes(b"not an hdf5 file at all" * 10)
        kw["h5_path"] = str(tmp_path / "x.h5")
        expect = "unreadable HDF5"
    with pytest.raises(InputError, match=expect) as err:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make_dm(root, **kw)
    msg = str(err.value)
    assert "\n" not in msg and ("bad" in msg or "x.h5" in msg or "data.params" in msg)


def _store_with_a_damaged_chunk(tmp_path, chunk: int):
    """A gzip HDF5 store of 2 simulations (30 maps of 16²) whose ``chunk``-th chunk (map) is zeroed:
    the header opens, that map's data does not decompress (a torn copy)."""
    import h5py

    from cosmoinfer.data.hdf5 import convert_to_hdf5

    root = tmp_path / "cmd"
    write_cmd_folder(root, n_sims=2, grid=16, fields=("Mtot",), suite="TestSuite")
    store = convert_to_hdf5(root, "TestSuite", ["Mtot"], tmp_path / "store.h5", compression="gzip")
    with h5py.File(store, "r") as f:
        info = f["maps"].id.get_chunk_info(chunk)
    raw = bytearray(store.read_bytes())
    raw[info.byte_offset:info.byte_offset + info.size] = b"\x00" * info.size
    store.write_bytes(bytes(raw))
    return store


def test_a_damaged_chunk_of_an_hdf5_store_is_one_line_naming_the_store(tmp_path):
    """Reading the damaged map is an InputError naming the store, not an h5py OSError."""
    from cosmoinfer.data.sources import H5Source
    from cosmoinfer.errors import InputError

    store = _store_with_a_damaged_chunk(tmp_path, 3)
    src = H5Source(store, ["Mtot"])
    assert src.read_one(2).shape == (1, 16, 16)  # the other maps still read
    with pytest.raises(InputError, match=r"store\.h5: map 3 cannot be read, the store is damaged"):
        src.read_one(3)
    with pytest.raises(InputError, match=r"maps 0:8 cannot be read"):
        src.read(0, 8)


def test_an_input_error_in_a_dataloader_worker_stays_one_line(tmp_path):
    from cosmoinfer.data.sources import H5Source
    from cosmoinfer.errors import InputError

    store = _store_with_a_damaged_chunk(tmp_path, 1)

    class Maps(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.from_numpy(H5Source(store, ["Mtot"]).read_one(i))

    loader = torch.utils.data.DataLoader(Maps(), batch_size=2, num_workers=1)
    with pytest.raises(InputError) as err:
        list(loader)
    text = str(err.value)
    assert text.startswith(f"{store}: map 1 cannot be read, the store is damaged (")
    assert "\n" not in text and "Traceback" not in text and "worker" not in text
