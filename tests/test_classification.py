"""Which suite made this map? A Bernoulli classifier over two simulated suites, end to end.

``cosmoinfer-simulate`` makes SynthTNG and SynthSIMBA temperature maps (the suites' temperature
normalisations differ, so a small CNN can tell them apart); the classifier is trained with
``experiment=suite_classification``, evaluated to classification predictions and reported with
accuracy, log-loss, Brier score and a reliability diagram.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from cosmoinfer.calibration.predictions import read_predictions
from cosmoinfer.calibration.report import build_report
from cosmoinfer.cli.common import CONF_DIR
from cosmoinfer.data.classification import SuiteClassificationDataModule, SuiteSource
from cosmoinfer.data.manifest import maps_filename
from cosmoinfer.errors import InputError
from cosmoinfer.simulators.job import simulate
from cosmoinfer.training.checkpoint import load_checkpoint
from cosmoinfer.training.run import build_datamodule, train
from cosmoinfer.uncertainty.evaluate import evaluate
from cosmoinfer.uncertainty.predictor import load_posterior_model

warnings.filterwarnings("ignore", message=".*inferring one.*")

SUITES = ["SynthTNG", "SynthSIMBA"]
N_SIMS = 16  # per suite
FIELD = "T"


def composed(name, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.fixture(scope="module")
def suites_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("suites") / "data"
    simulate(composed("simulate", "simulator=camels_like", f"suites=[{','.join(SUITES)}]", f"fields=[{FIELD}]",
                      f"n_sims={N_SIMS}", "grid=16", "progress=false", f"out_dir={root}"))
    return root


def train_overrides(root, out, *extra):
    return [f"data.root={root}", f"data.fields=[{FIELD}]", f"out_dir={out}", "model.hidden=4",
            "data.split_fractions=[0.6,0.2,0.2]", "callbacks.progress_bar=null",
            "trainer.enable_progress_bar=false", *extra]


@pytest.fixture(scope="module")
def classifier(suites_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clf") / "run"
    torch.set_num_threads(1)
    train(composed("train", "experiment=suite_classification",
                   *train_overrides(suites_root, out, "trainer.max_epochs=6")))
    return out


def test_datamodule_mixes_two_suites_split_by_simulation(suites_root, tmp_path):
    cfg = composed("train", "data=suite_classification", "loss=bernoulli", *train_overrides(suites_root, tmp_path))
    dm = build_datamodule(cfg, tmp_path)
    assert isinstance(dm, SuiteClassificationDataModule)
    dm.setup("fit")
    src = dm.source
    assert isinstance(src, SuiteSource) and src.n_maps == 2 * N_SIMS * 15
    assert dm.param_names == ["is_SynthSIMBA"] and dm.fields == [FIELD]
    # labels: the first suite's simulations are 0, the second's 1
    np.testing.assert_array_equal(src.params[:, 0], np.repeat([0.0, 1.0], N_SIMS))
    # maps in physical units, in suite order, also across the boundary between the suites
    a = np.load(suites_root / maps_filename(FIELD, SUITES[0], "LH"), mmap_mode="r")
    b = np.load(suites_root / maps_filename(FIELD, SUITES[1], "LH"), mmap_mode="r")
    i = N_SIMS * 15
    np.testing.assert_array_equal(src.read(i - 2, i + 3)[:, 0], np.concatenate([a[-2:], b[:3]]))
    np.testing.assert_array_equal(src.read_one(i + 4)[0], b[4])
    # split by simulation, each suite alike: both classes in every split, twins together
    split = json.loads((tmp_path / "split.json").read_text())
    for k in ("train", "val", "test"):
        ids = np.asarray(split[k])
        assert (ids < N_SIMS).any() and (ids >= N_SIMS).any(), k
        np.testing.assert_array_equal(np.sort(ids[ids < N_SIMS]) + N_SIMS, np.sort(ids[ids >= N_SIMS]))
    assert sorted(sum((split[k] for k in ("train", "val", "test")), [])) == list(range(2 * N_SIMS))
    x, y, sim = dm.datasets["test"][0]
    assert x.shape == (1, 16, 16) and y.tolist() == [float(int(sim) >= N_SIMS)]
    # the normalisation comes from the training maps of both suites
    train_ids = np.asarray(split["train"])
    maps = np.concatenate([np.log10(a[s * 15:(s + 1) * 15]) if s < N_SIMS else
                           np.log10(b[(s - N_SIMS) * 15:(s - N_SIMS + 1) * 15]) for s in train_ids])
    np.testing.assert_allclose(dm.normalizer.mean[0], maps.mean(), rtol=1e-5)
    with pytest.raises(InputError, match="two different suites"):
        SuiteClassificationDataModule(suites=["SynthTNG"], root=str(suites_root))


def test_classifier_trains_evaluates_and_reports(classifier, suites_root, tmp_path):
    # training: the Bernoulli loss goes down and the validation accuracy is logged
    with open(classifier / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    losses = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    accs = [float(r["val/accuracy"]) for r in rows if r.get("val/accuracy")]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert len(accs) == 6 and all(0 <= v <= 1 for v in accs)
    ckpt = classifier / "checkpoints" / "best.ckpt"
    meta = load_checkpoint(ckpt).meta
    assert meta["loss"]["name"] == "bernoulli"
    assert meta["data"]["datamodule"] == "suite_classification" and meta["data"]["suites"] == SUITES
    assert meta["data"]["param_names"] == ["is_SynthSIMBA"]

    # evaluation: classification predictions on the test split of the checkpoint
    out = evaluate(composed("evaluate", "evaluator=single", f"checkpoints={ckpt}", f"out_dir={tmp_path / 'single'}"))
    with h5py.File(out, "r") as f:
        assert f.attrs["task"] == "classification" and f.attrs["method"] == "single"
        assert [str(s) for s in f.attrs["param_names"]] == ["is_SynthSIMBA"]
        truth, prob, sim_id = f["truth"][()], f["mean"][()], f["sim_id"][()]
    n = len(sim_id)
    assert truth.shape == prob.shape == (n, 1) and n == 2 * 3 * 15  # 3 test simulations of each suite
    assert sorted(set(sim_id.tolist())) == sorted(meta["data"]["split"]["test"])
    np.testing.assert_array_equal(truth[:, 0], (sim_id >= N_SIMS).astype(float))
    assert np.all((prob > 0) & (prob < 1))
    accuracy = np.mean((prob[:, 0] >= 0.5) == (truth[:, 0] == 1))
    assert accuracy > 0.6, accuracy  # chance is 0.5 (balanced test split)

    # MC dropout: the mixture of Bernoullis is a Bernoulli with the mean probability
    mc = read_predictions(evaluate(composed("evaluate", "evaluator=mc_dropout", "evaluator.n_samples=4",
                                            f"checkpoints={ckpt}", f"out_dir={tmp_path / 'mc'}")))
    assert mc.task == "classification" and mc.member_mean.shape == (4, n, 1)
    np.testing.assert_allclose(mc.mean, mc.member_mean.mean(0), rtol=1e-12)
    np.testing.assert_allclose(mc.std**2, mc.mean * (1 - mc.mean), rtol=1e-9)
    np.testing.assert_allclose(mc.std**2, mc.std_aleatoric**2 + mc.std_epistemic**2, rtol=1e-9)
    assert np.all(mc.std_epistemic > 0)

    # the Python API gives the same probabilities for the same maps
    maps = np.concatenate([np.load(suites_root / maps_filename(FIELD, s, "LH"), mmap_mode="r")[:15] for s in SUITES])
    post = load_posterior_model(ckpt).predict_maps(maps)
    assert post.task == "classification" and post.mean.shape == (30, 1)

    # the report: accuracy, log-loss, Brier, reliability diagram, all figures embedded
    paths = build_report([out, mc.path], tmp_path / "report", n_bootstrap=5, n_posterior_samples=50)
    doc = json.loads(paths.metrics.read_text())
    assert doc["task"] == "classification"
    m = doc["params"]["is_SynthSIMBA"]
    assert {"accuracy", "log_loss", "brier", "ece", "reliability"} <= set(m)
    assert m["accuracy"] == pytest.approx(accuracy)
    assert 0 <= m["brier"] <= 1 and m["log_loss"] > 0
    html = paths.html.read_text()
    for word in ("accuracy", "log-loss", "Brier", "Reliability"):
        assert word in html, word
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert len(srcs) == len(paths.figures) >= 3  # two reliability diagrams and the comparison
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
