"""The sbi peer of the statistical benchmark: sbi's neural posterior estimation (NPE) on the grf maps.

A stock NPE (``sbi.inference.NPE``, a neural spline flow ``posterior_nn(model="nsf")``) trained on
the same maps as our networks, under the same wall-clock budget, and scored by the same code::

    python -m pipelines.physical_limit.sbi_npe --data DIR --out DIR --embedding cnn|ps --budget-min 8 \\
        --seed 0 --split-fractions 0.7,0.05,0.25 --exact-grid 128 [--n-samples 1000] [--threads N]

``--data`` is a folder written by ``cosmoinfer-simulate simulator=grf``. Its split comes from the
project's own data module, composed from ``conf/train.yaml`` with ``experiment=grf_fisher
data.root=DIR data.split_fractions=[...]``, so train / val / test hold exactly the simulations
``cosmoinfer-train`` uses with the same overrides. The flow takes gradient steps on the training
maps; sbi's own validation (early stopping, choice of the best epoch) runs on the validation maps,
the roles the two splits play for our networks. ``theta`` is the physical ``[Omega_m, sigma_8]``,
the prior a ``BoxUniform`` on the prior box (the interval in theta for a log-uniform prior).

``--embedding``:

* ``cnn``: sbi's stock ``CNNEmbedding`` on the raw map (sbi z-scores it with one mean and std,
  ``z_score_x="structured"``), of the scale of our CMD CNN at ``model.hidden=4``: 3x3 convolutions
  with 8, 16, 32, 64 channels at 64^2 (one per halving, down to 4x4), each with ReLU and 2x2 max pooling,
  then two fully connected layers of 128 units to 32 features. Unlike our CNN it pads with zeros,
  not circularly, and sees no rotations/flips (neither in training nor at test time).
* ``ps``: the binned power spectrum of each map, as our baseline measures it
  (:func:`cosmoinfer.simulators.summary.binned_power_spectrum_np`: ``min(32, grid/2)`` linear
  ``|k|`` bins to the grid corner, spectrum of ``M - mean(M)``, ``log10``), computed once, with a
  small MLP embedding (sbi's ``FCEmbedding``, 2 layers of 128 units, 32 features).

Budget: ``--budget-min`` minutes of one ``NPE.train`` call (set-up, epochs and sbi's validation
passes). sbi has no time limit; before each epoch it asks ``_converged`` (early stopping after
``stop_after_epochs`` = 20 epochs without improvement on the validation maps, best weights kept),
and here that check also stops, with the best weights so far (as our ``best.ckpt``), when the next
epoch, as long as the last one, would end past the budget. The first epoch always runs. (Chunks of
``train(max_num_epochs=k, resume_training=True)`` would distort sbi's early stopping: at a chunk's
end it neither resets its count of epochs without improvement nor keeps the weights' trajectory,
reloading the best ones, and each resumed call counts one more epoch without improvement.)

Posterior: sbi's ``DirectPosterior`` is the flow restricted to the prior box and renormalised
there. It is computed here directly from the flow, for all test maps in batches: for each map
``--n-samples`` draws inside the box (rejection: draws outside are dropped and more drawn for the
maps that lack them), their log-densities and the log-density at the truth, each minus
``log(acceptance)`` of that map (the fraction of the flow's draws inside the box, estimated from
every draw made for it: what ``DirectPosterior.log_prob(..., norm_posterior=True)`` does for one
map with 10 000 draws). The leakage (1 - acceptance) is recorded. Written as a
:class:`~cosmoinfer.posterior.SamplePredictive` to ``--out/predictions.h5`` with the exact
posterior datasets the evaluator stores for grf maps
(:func:`cosmoinfer.simulators.grf_exact_datasets.extra_datasets`), so
``cosmoinfer.calibration.compute_metrics`` scores it like our networks' files; ``--out/train_info.json``
holds the training record. sbi is an optional dependency: ``pip install -e '.[bench]'``.

Note (sbi 0.27.0): ``NFlowsFlow.sample_and_log_prob`` pairs the draws of a batch of conditions
with the wrong log-densities (nflows returns ``(batch, sample)``, sbi reshapes it to ``(sample,
batch)`` without transposing). The draws here come from the nflows flow with the axes put right,
checked against ``NFlowsFlow.log_prob`` on the first batch; other estimators draw, then evaluate.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from cosmoinfer.errors import InputError, atomic_write_text

PROG = "python -m pipelines.physical_limit.sbi_npe"
EMBEDDINGS = ("cnn", "ps")
#: maps x draws per sampling batch (memory ~ this x the flow's hidden width x 4 bytes x a few)
DRAWS_PER_BATCH = 200_000
#: draws per map at most, in multiples of --n-samples, before a map's rejection sampling gives up
MAX_DRAW_FACTOR = 100
NOT_INSTALLED = "sbi is not installed: pip install -e '.[bench]'"


# --------------------------------------------------------------------------- data
def train_config(data: str, fractions: list[float] | None, experiment: str = "grf_fisher"):
    """The composed ``cosmoinfer-train experiment=<experiment> data.root=<data> [data.split_fractions=...]`` config.

    Raises :class:`InputError` (one line naming the folder) when ``data`` is not a folder or holds
    no map file of the experiment's (grf) field; nothing is read yet.
    """
    root = Path(data)
    if not root.is_dir():
        raise InputError(root, "--data is not a folder; give the out_dir of a 'cosmoinfer-simulate simulator=grf' run")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cosmoinfer.cli.common import CONF_DIR
    from cosmoinfer.data.manifest import maps_filename

    overrides = [f"experiment={experiment}", f"data.root={root.resolve()}", f"out_dir={root.resolve()}"]
    if fractions is not None:
        overrides.append(f"data.split_fractions=[{','.join(str(f) for f in fractions)}]")
    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name="train", overrides=overrides)
    else:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
    d = cfg.data
    maps = root / maps_filename(d.fields[0], d.suite, d.set)
    if len(d.fields) != 1 or not maps.is_file():
        raise InputError(root, f"holds no grf maps ({maps.name}); give the out_dir of a "
                               f"'cosmoinfer-simulate simulator=grf' run")
    return cfg


def load_datamodule(cfg):
    """The set-up :class:`~cosmoinfer.data.datamodule.CMDDataModule` of the train config ``cfg``
    (:func:`train_config`), built as ``cosmoinfer-train`` builds it: same split, same priors.

    Raises :class:`InputError` (one line naming the folder) when its maps are not the ``grf`` simulator's.
    """
    from cosmoinfer.simulators.grf_exact_datasets import simulator_config
    from cosmoinfer.training.run import build_datamodule

    dm = build_datamodule(cfg, None)
    dm.setup("fit")  # the split by simulation, every map checked; an empty val split is one line
    sim_cfg = simulator_config(dm)
    if sim_cfg is None or sim_cfg.get("name") != "grf":
        name = None if sim_cfg is None else sim_cfg.get("name")
        raise InputError(cfg.data.root, f"holds maps of simulator {name!r}, not grf (the exact posterior needs "
                                        f"'cosmoinfer-simulate simulator=grf' maps)")
    return dm


def read_maps(source, indices: np.ndarray, block: int = 4096) -> np.ndarray:
    """Maps ``indices`` of a one-field source in physical units, ``(n, H, W)`` float32 (contiguous block reads)."""
    idx = np.asarray(indices, dtype=np.int64)
    out = np.empty((len(idx), source.grid, source.grid), dtype=np.float32)
    start = 0
    for run in np.split(np.arange(len(idx)), np.flatnonzero(np.diff(idx) != 1) + 1):
        if not len(run):
            continue
        for j0 in range(0, len(run), block):
            n = min(block, len(run) - j0)
            i0 = int(idx[run[j0]])
            out[start:start + n] = source.read(i0, i0 + n)[:, 0]
            start += n
    return out


def ps_features(maps: np.ndarray, n_bins: int, block: int = 1024) -> np.ndarray:
    """``log10`` binned power spectra of grf maps ``(n, H, W)`` -> ``(n, n_bins)`` float32 (our baseline's bins)."""
    from cosmoinfer.simulators.summary import binned_power_spectrum_np

    out = np.empty((len(maps), n_bins), dtype=np.float32)
    for i0 in range(0, len(maps), block):
        p = binned_power_spectrum_np(maps[i0:i0 + block, None], n_bins, overdensity=False, k_max="corner")[:, 0]
        out[i0:i0 + block] = np.log10(np.maximum(p, np.finfo(np.float32).tiny))
    return out


# --------------------------------------------------------------------------- sbi
def import_sbi():
    """``sbi`` (and its version), or :class:`InputError` saying how to install it."""
    try:
        import sbi
        from sbi.inference import NPE  # noqa: F401
    except ImportError:
        raise InputError(None, NOT_INSTALLED) from None
    return sbi


def embedding_net(kind: str, grid: int, n_features: int):
    """sbi's stock embedding: ``CNNEmbedding`` of the map (``cnn``) or ``FCEmbedding`` of the spectrum (``ps``)."""
    from sbi.neural_nets.embedding_nets import CNNEmbedding, FCEmbedding

    if kind == "cnn":
        n_layers = max(1, int(math.log2(grid)) - 2)  # halvings down to 4x4, as our CMD CNN
        channels = [min(4 * 2 ** (s + 1), 512) for s in range(n_layers)]  # hidden 4: 8, 16, 32, 64
        return CNNEmbedding(input_shape=(grid, grid), in_channels=1, out_channels_per_layer=channels,
                            num_conv_layers=n_layers, num_linear_layers=2, num_linear_units=128, output_dim=32,
                            kernel_size=3, pool_kernel_size=2)
    return FCEmbedding(input_dim=n_features, output_dim=32, num_layers=2, num_hiddens=128)


class _NoTracker:
    """An sbi ``Tracker`` that records nothing (sbi's default writes TensorBoard logs into ./sbi-logs)."""

    log_dir = None

    def log_metric(self, name, value, step=None):
        pass

    def log_metrics(self, metrics, step=None):
        pass

    def log_params(self, params):
        pass

    def add_figure(self, name, figure, step=None):
        pass

    def flush(self):
        pass


def budget_npe(train_idx, val_idx, budget_s: float):
    """``sbi.inference.NPE`` with our train / validation rows and a wall-clock budget on one ``train`` call.

    * Split: sbi draws its train / validation split once, in ``get_dataloaders``, and reuses it when
      ``resume_training=True``; here it is set to ``train_idx`` / ``val_idx`` on every call (sbi
      z-scores with the training rows only).
    * Budget: sbi asks ``_converged`` before every epoch (it keeps the best weights on the
      validation rows and stops after ``stop_after_epochs`` without improvement). Here it also
      stops, with the best weights, when the next epoch (as long as the last one, training plus
      validation) would end past ``budget_s`` seconds after ``train`` was called. The first epoch always runs.
    """
    import torch
    from sbi.inference import NPE

    tr, va = torch.as_tensor(train_idx, dtype=torch.long), torch.as_tensor(val_idx, dtype=torch.long)

    class BudgetNPE(NPE):
        stop_reason = None
        t_start = t_last = None

        def get_dataloaders(self, starting_round=0, training_batch_size=200, validation_fraction=0.1,
                            resume_training=False, dataloader_kwargs=None):
            self.train_indices, self.val_indices = tr, va
            return super().get_dataloaders(starting_round, training_batch_size, validation_fraction,
                                           resume_training=True, dataloader_kwargs=dataloader_kwargs)

        def _converged(self, epoch, stop_after_epochs):
            now = time.perf_counter()
            if super()._converged(epoch, stop_after_epochs):  # sbi's early stopping (best weights loaded)
                self.stop_reason = "early_stopping"
                return True
            last, self.t_last = (None if self.t_last is None else now - self.t_last), now
            if last is not None and now - self.t_start + last > budget_s:
                self._neural_net.load_state_dict(self._best_model_state_dict)
                self.stop_reason = "budget"
                return True
            return False

    return BudgetNPE


def train_npe(theta: np.ndarray, x: np.ndarray, n_train: int, prior, embedding, z_score_x: str,
              budget_s: float, batch_size: int = 200, log=print):
    """Train NPE on rows ``[0, n_train)`` of ``(theta, x)``, validate on the rest, within ``budget_s`` seconds.

    Returns ``(density_estimator, record)``; ``record`` holds ``train_seconds`` (the ``train`` call:
    set-up, epochs and their validation), ``epochs``, ``stop_reason`` (``budget`` or
    ``early_stopping``) and ``best_val_loss``.
    """
    import torch
    from sbi.neural_nets import posterior_nn

    n = len(theta)
    cls = budget_npe(np.arange(n_train), np.arange(n_train, n), budget_s)
    build = posterior_nn(model="nsf", embedding_net=embedding, z_score_x=z_score_x)
    inference = cls(prior=prior, density_estimator=build, device="cpu", show_progress_bars=False,
                    tracker=_NoTracker())
    inference.append_simulations(torch.as_tensor(theta, dtype=torch.float32), torch.as_tensor(x, dtype=torch.float32))
    t0 = inference.t_start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # sbi prints "converged after N epochs"
        estimator = inference.train(training_batch_size=batch_size, validation_fraction=(n - n_train) / n)
    spent = time.perf_counter() - t0
    summary = getattr(inference, "_summary", None) or {}
    val = summary.get("validation_loss") or []
    best = (summary.get("best_validation_loss") or [float("nan")])[-1]
    for e in range(0, len(val), max(1, len(val) // 10)):
        log(f"[sbi_npe] epoch {e + 1}: val loss {val[e]:.4f}")
    log(f"[sbi_npe] stopped by {inference.stop_reason} after {inference.epoch} epochs, {spent / 60:.2f} of "
        f"{budget_s / 60:.2f} min; best val loss {best:.4f}")
    estimator.eval()
    return estimator, {"train_seconds": spent, "epochs": int(inference.epoch), "stop_reason": inference.stop_reason,
                       "best_val_loss": float(best)}


def _draw(estimator, n: int, cond, checked: list) -> tuple:
    """``n`` flow draws per condition with their log-densities: ``(n, B, P)``, ``(n, B)`` tensors."""
    net = getattr(estimator, "net", None)
    if hasattr(net, "sample_and_log_prob") and checked[0] is not False:
        s, lp = net.sample_and_log_prob(n, context=cond)  # nflows: (B, n, P), (B, n)
        s, lp = s.transpose(0, 1), lp.transpose(0, 1)
        if checked[0] is None:  # once: the axes as nflows gives them, against sbi's own log_prob
            ref = estimator.log_prob(s[: min(n, 8), : min(len(cond), 4)], condition=cond[: min(len(cond), 4)])
            checked[0] = bool(np.allclose(ref.numpy(), lp[: min(n, 8), : min(len(cond), 4)].numpy(), atol=1e-3))
            if not checked[0]:
                return _draw(estimator, n, cond, checked)
        return s, lp
    s = estimator.sample((n,), condition=cond)
    return s, estimator.log_prob(s, condition=cond)


def sample_posterior(estimator, x: np.ndarray, truth: np.ndarray, bijection, n_samples: int, log=print):
    """sbi's posterior (the flow inside the prior box, renormalised) for every row of ``x``.

    Returns ``samples (N, S, P)``, ``sample_log_prob (N, S)``, ``truth_log_prob (N,)`` (physical
    units, float64, minus ``log`` acceptance) and ``acceptance (N,)``, the flow's mass inside the box.
    """
    import torch

    n, p = len(x), truth.shape[1]
    samples = np.empty((n, n_samples, p))
    slp = np.empty((n, n_samples))
    tlp = np.empty(n)
    acc = np.empty(n)
    checked = [None]
    batch = max(1, DRAWS_PER_BATCH // n_samples)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i0 in range(0, n, batch):
            cond = torch.as_tensor(x[i0:i0 + batch], dtype=torch.float32)
            b = len(cond)
            got = [[] for _ in range(b)]
            lps = [[] for _ in range(b)]
            n_got, n_drawn = np.zeros(b, dtype=np.int64), np.zeros(b, dtype=np.int64)
            todo = np.arange(b)
            while len(todo):
                rate = np.maximum(n_got[todo] / np.maximum(n_drawn[todo], 1), 0.01)
                need = np.where(n_drawn[todo] == 0, n_samples, np.ceil(1.2 * (n_samples - n_got[todo]) / rate))
                k = int(min(need.max(), max(n_samples, 2 * DRAWS_PER_BATCH // len(todo)), 10 * n_samples))
                s, lp = _draw(estimator, k, cond[todo], checked)
                s, lp = s.double().numpy(), lp.double().numpy()  # (k, m, P), (k, m)
                inside = bijection.in_box(bijection.inverse(s))  # the prior box in float64, as the scoring sees it
                for j, row in enumerate(todo):
                    ok = np.flatnonzero(inside[:, j])
                    got[row].append(s[ok, j])
                    lps[row].append(lp[ok, j])
                    n_got[row] += len(ok)
                    n_drawn[row] += k
                todo = todo[(n_got[todo] < n_samples) & (n_drawn[todo] < MAX_DRAW_FACTOR * n_samples)]
            short = set(np.flatnonzero(n_got < n_samples).tolist())
            if np.any(n_got == 0):
                bad = i0 + int(np.flatnonzero(n_got == 0)[0])
                raise InputError(None, f"the trained flow puts no mass in the prior box for test map {bad} "
                                       f"({MAX_DRAW_FACTOR * n_samples} draws): it is not trained; raise --budget-min")
            rng = np.random.default_rng(i0)
            for j in range(b):
                s_j, lp_j = np.concatenate(got[j]), np.concatenate(lps[j])
                # a map short of draws inside the box after MAX_DRAW_FACTOR x S: its accepted ones, resampled
                pick = np.arange(n_samples) if j not in short else rng.integers(len(s_j), size=n_samples)
                a = n_got[j] / n_drawn[j]
                samples[i0 + j], slp[i0 + j], acc[i0 + j] = s_j[pick], lp_j[pick] - np.log(a), a
            t = torch.as_tensor(truth[i0:i0 + batch], dtype=torch.float32)
            tlp[i0:i0 + b] = estimator.log_prob(t[None], condition=cond)[0].double().numpy() - np.log(acc[i0:i0 + b])
            if len(short):
                log(f"[sbi_npe] {len(short)} map(s) of batch {i0 // batch} have fewer than {n_samples} draws in the "
                    f"prior box after {MAX_DRAW_FACTOR * n_samples} draws; their draws are resampled")
            done = min(i0 + batch, n)
            if done == n or (i0 // batch) % 10 == 0:
                log(f"[sbi_npe] sampled {done}/{n} maps ({time.perf_counter() - t0:.0f} s)")
    return samples, slp, tlp, acc


# --------------------------------------------------------------------------- the command
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="folder of 'cosmoinfer-simulate simulator=grf' maps")
    ap.add_argument("--out", required=True, help="output folder: predictions.h5, train_info.json, split.json")
    ap.add_argument("--embedding", required=True, choices=EMBEDDINGS)
    ap.add_argument("--budget-min", type=float, default=8.0, help="training minutes (sbi's validation included)")
    ap.add_argument("--seed", type=int, default=0, help="torch / numpy seed (the split has its own: data.split_seed)")
    ap.add_argument("--split-fractions", default=None,
                    help="train,val,test fractions by simulation, as data.split_fractions (default: the experiment's)")
    ap.add_argument("--exact-grid", type=int, default=128, help="exact posterior grid for the corner plots")
    ap.add_argument("--n-samples", type=int, default=1000, help="posterior draws per test map")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: OMP_NUM_THREADS, as the benchmark's stages set it, else torch's)")
    ap.add_argument("--batch-size", type=int, default=200, help="sbi training batch size (sbi's default)")
    ap.add_argument("--experiment", default="grf_fisher", help="the train experiment whose data config gives the split")
    a = ap.parse_args(argv)
    if a.split_fractions is not None:
        try:
            a.split_fractions = [float(f) for f in a.split_fractions.split(",")]
        except ValueError:
            ap.error(f"--split-fractions: expected three numbers like 0.7,0.05,0.25, got {a.split_fractions!r}")
    if not a.budget_min > 0 or a.n_samples < 2 or (a.threads is not None and a.threads < 1) or a.exact_grid < 2:
        ap.error("--budget-min must be > 0, --n-samples >= 2, --threads >= 1, --exact-grid >= 2")
    return a


def run(a: argparse.Namespace, log=print) -> Path:
    t_start = time.perf_counter()
    cfg = train_config(a.data, a.split_fractions, a.experiment)
    sbi = import_sbi()
    import torch
    from sbi.utils import BoxUniform

    from cosmoinfer.data.priors import from_unit
    from cosmoinfer.data.splits import save_split
    from cosmoinfer.errors import ensure_writable_dir
    from cosmoinfer.posterior import Bijection, SamplePredictive, write_predictions
    from cosmoinfer.simulators.grf_exact_datasets import extra_datasets

    out = ensure_writable_dir(a.out, "--out")
    warnings.filterwarnings("ignore", message=".*triangular_solve is deprecated.*")  # nflows' LU layers, not ours
    if a.threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        a.threads = int(os.environ["OMP_NUM_THREADS"])
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    a.threads = torch.get_num_threads()
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)

    dm = load_datamodule(cfg)
    src, priors, names = dm.source, list(dm.priors), list(dm.param_names)
    t0 = time.perf_counter()
    ds = {k: dm.datasets[k] for k in ("train", "val", "test")}
    maps_per_sim = src.maps_per_sim

    def theta_of(k: str) -> tuple[np.ndarray, np.ndarray]:
        """Physical parameters and sim ids of split ``k``'s maps, in evaluation order, as the evaluator has them."""
        sim = ds[k].indices // maps_per_sim
        return from_unit(ds[k].sim_targets[sim].astype(np.float64), priors), sim

    x = {k: read_maps(src, ds[k].indices) for k in ds}
    if a.embedding == "ps":
        n_bins = min(32, src.grid // 2)
        x = {k: ps_features(v, n_bins) for k, v in x.items()}
    load_s = time.perf_counter() - t0
    (th_tr, _), (th_va, _), (truth, sim_id) = theta_of("train"), theta_of("val"), theta_of("test")
    log(f"[sbi_npe] {len(th_tr)} train / {len(th_va)} val / {len(truth)} test maps of {src.grid}^2, "
        f"x {tuple(x['train'].shape[1:])} ({load_s:.0f} s to read)")
    if not len(truth):
        raise InputError(a.data, "the test split holds no maps; use more simulations or other --split-fractions")

    low = torch.tensor([p.low for p in priors], dtype=torch.float32)
    high = torch.tensor([p.high for p in priors], dtype=torch.float32)
    prior = BoxUniform(low=low, high=high)
    emb = embedding_net(a.embedding, src.grid, x["train"].shape[-1])
    x_fit = np.concatenate([x.pop("train"), x.pop("val")])  # rows: the training maps, then the validation maps
    estimator, rec = train_npe(np.concatenate([th_tr, th_va]), x_fit, len(th_tr), prior, emb,
                               "structured" if a.embedding == "cnn" else "independent", a.budget_min * 60,
                               a.batch_size, log)
    del x_fit

    bij = Bijection.from_priors(priors)
    t0 = time.perf_counter()
    torch.manual_seed(a.seed + 1)
    samples, slp, tlp, acc = sample_posterior(estimator, x["test"], truth, bij, a.n_samples, log)
    sample_s = time.perf_counter() - t0
    q = SamplePredictive(samples, slp, tlp, bij, names)
    t0 = time.perf_counter()
    post = SimpleNamespace(param_names=names, truth=truth)
    extra = extra_datasets({"exact_posterior": "auto", "exact_grid": a.exact_grid}, dm, "test", post)
    exact_s = time.perf_counter() - t0

    leak = 1.0 - acc
    method = f"sbi_npe_{a.embedding}"
    info = {
        "method": method, "embedding": a.embedding, "sbi_version": str(sbi.__version__),
        "torch_version": str(torch.__version__),
        "density_estimator": "nsf", "budget_minutes": a.budget_min, "train_minutes": rec["train_seconds"] / 60,
        "epochs": rec["epochs"], "stop_reason": rec["stop_reason"],
        "best_val_loss": rec["best_val_loss"], "n_train": len(th_tr), "n_val": len(th_va), "n_test": len(truth),
        "n_train_sims": len(dm.split["train"]), "grid": int(src.grid), "batch_size": a.batch_size,
        "threads": a.threads, "seed": a.seed, "split_fractions": dm.split.get("fractions"),
        "split_seed": dm.split.get("seed"), "n_draws": a.n_samples, "read_seconds": load_s,
        "sample_seconds": sample_s, "exact_seconds": exact_s,
        "leakage_mean": float(leak.mean()), "leakage_median": float(np.median(leak)),
        "leakage_max": float(leak.max()), "leakage_frac_maps_over_1pct": float(np.mean(leak > 0.01)),
    }
    mean, cov = q.moments()
    std = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    from cosmoinfer.provenance import code_version

    run_rec = {"run_version": 1, "code_version": code_version(), "model": {"sbi": method, "density_estimator": "nsf"},
               "seeds": [a.seed], "n_networks": 1, "epochs_trained": [rec["epochs"]],
               "training_data": {"suite": dm.suite, "set": dm.set, "fields": list(dm.fields), "params": names,
                                 "grid": int(src.grid), "simulator": "grf", "source": str(Path(a.data).resolve()),
                                 "maps_per_sim": int(maps_per_sim),
                                 "n_sims": {k: len(dm.split[k]) for k in ("train", "val", "test")},
                                 "n_maps": {k: len(ds[k]) for k in ("train", "val", "test")}},
               "evaluated": {"suite": dm.suite, "split": "test", "n_maps": len(truth),
                             "n_sims": int(len(np.unique(sim_id)))}}
    path = write_predictions(
        out / "predictions.h5", truth=truth, mean=mean, std=std, std_aleatoric=std, std_epistemic=np.zeros_like(std),
        sim_id=sim_id, param_names=names, method=method, split="test", cov=0.5 * (cov + np.swapaxes(cov, 1, 2)),
        n_members=1, priors=priors, extra_datasets=extra or None, predictive=q,
        extra_attrs={**{k: v for k, v in info.items() if isinstance(v, (int, float, str, bool))}, "run": run_rec})
    save_split(dm.split, out / "split.json")
    info["wall_minutes"] = (time.perf_counter() - t_start) / 60
    atomic_write_text(out / "train_info.json", json.dumps(info, indent=1))
    log(f"[sbi_npe] {rec['epochs']} epochs in {info['train_minutes']:.2f} min; sampled {len(truth)} maps x "
        f"{a.n_samples} in {sample_s:.0f} s (leakage mean {info['leakage_mean']:.4f}, max {info['leakage_max']:.4f}); "
        f"exact posterior {exact_s:.0f} s")
    log(f"predictions: {path}")
    return path


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        run(a)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
