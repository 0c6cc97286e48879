"""Build and run a training job from a composed Hydra config (the body of ``cosmoinfer-train``)."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from cosmoinfer.data.datamodule import CMDDataModule
from cosmoinfer.data.meta import DataMeta
from cosmoinfer.data.splits import save_split
from cosmoinfer.errors import ensure_writable_dir
from cosmoinfer.models.likelihoods import build_likelihood
from cosmoinfer.models.network import build_network
from cosmoinfer.training.callbacks import AtomicCheckpointIO, EpochLine, NonFiniteGuard
from cosmoinfer.training.checkpoint import read_checkpoint
from cosmoinfer.training.config_checks import check_train_config
from cosmoinfer.training.module import PosteriorModule
from cosmoinfer.training.reproducibility import BatchSeed
from cosmoinfer.training.resume import check_resume_config, check_resume_data
from cosmoinfer.training.transfer import load_backbone

log = logging.getLogger("cosmoinfer.train")


def _container(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})


def build_datamodule(cfg: DictConfig, out_dir: Path) -> CMDDataModule:
    """``CMDDataModule``, or the subclass that ``data._target_`` names (e.g. ``data=suite_classification``)."""
    kwargs = _container(cfg.data)
    target = kwargs.pop("_target_", None)
    cls = hydra.utils.get_class(target) if target else CMDDataModule
    kwargs.setdefault("seed", int(cfg.get("seed") or 0))  # the training order of every epoch
    return cls(**kwargs, out_dir=None if out_dir is None else str(out_dir))


def run_configs(cfg: DictConfig) -> dict:
    """The model, loss, optimizer and scheduler configs as plain data (as stored in every checkpoint)."""
    return {"model": _container(cfg.model), "loss": _container(cfg.loss), "optimizer": _container(cfg.optimizer),
            "scheduler": _container(cfg.scheduler) if cfg.get("scheduler") else None}


def build_module(cfg: DictConfig, dm: CMDDataModule) -> PosteriorModule:
    """Network + likelihood + the plain-data metadata every checkpoint carries."""
    configs = run_configs(cfg)
    model_cfg, loss_cfg = configs["model"], configs["loss"]
    likelihood = build_likelihood(n_params=len(dm.param_names), **loss_cfg)
    network = build_network(in_channels=len(dm.fields), grid=dm.source.grid, n_outputs=likelihood.n_outputs,
                            **model_cfg)
    network.set_input_stats(torch.tensor(dm.normalizer.mean), torch.tensor(dm.normalizer.std),
                            torch.tensor(dm.normalizer.log))
    meta = {"version": 1, "model": model_cfg, "loss": loss_cfg, "data": dm.state(), "seed": int(cfg.seed),
            "optimizer": configs["optimizer"], "scheduler": configs["scheduler"]}
    transfer = cfg.get("transfer") or {}
    if transfer.get("checkpoint"):
        meta["transfer"] = load_backbone(network, transfer["checkpoint"], dm, bool(transfer.get("freeze", True)))
    return PosteriorModule(network, likelihood, meta, configs["optimizer"], configs["scheduler"])


class _DropTips(logging.Filter):
    """Lightning's advertising lines ("Tip: ... try installing litlogger"): nothing a user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def quiet_lightning() -> None:
    """Drop the noise a user cannot act on: Lightning's tips and its own deprecation warnings."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


def build_trainer(cfg: DictConfig, out_dir: Path) -> pl.Trainer:
    """The Lightning Trainer of ``cfg.trainer`` with the configured callbacks and loggers.

    Off a terminal (a log file, a batch job) the progress bar is replaced by one line per epoch
    (:class:`EpochLine`), so logs hold no bar debris.
    """
    quiet_lightning()
    trainer_cfg = _container(cfg.trainer)
    on_terminal = sys.stderr.isatty()
    callbacks = [NonFiniteGuard(), EpochLine(), BatchSeed(int(cfg.seed))]
    for name, c in (cfg.get("callbacks") or {}).items():
        if c and "_target_" not in c:  # e.g. a preset's callbacks.refit_widths.* under callbacks=refit_head
            log.warning("callbacks.%s: options without a callback (the callbacks group in use does not define "
                        "it): ignored", name)
            continue
        if c and (on_terminal or not str(c.get("_target_", "")).endswith("ProgressBar")):
            callbacks.append(hydra.utils.instantiate(c))
    if not on_terminal:
        trainer_cfg["enable_progress_bar"] = False
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    if trainer_cfg.get("strategy") == "ddp" and trainer_cfg.get("accelerator") == "cpu":
        from pytorch_lightning.strategies import DDPStrategy

        trainer_cfg["strategy"] = DDPStrategy(process_group_backend="gloo")
    # our DataModule shards the data itself: training with its EpochSampler, evaluation unpadded
    return hydra.utils.instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False,
                                   default_root_dir=str(out_dir), use_distributed_sampler=False,
                                   plugins=[AtomicCheckpointIO()])


def train(cfg: DictConfig) -> float | None:
    """Train one network; returns the best ``val/loss`` (the value an Optuna sweep minimises)."""
    # nothing is read or written before the output folder and the trainer/optimizer settings pass
    out_dir = ensure_writable_dir(cfg.out_dir, "out_dir")
    check_train_config(cfg)
    pl.seed_everything(int(cfg.seed), workers=True)
    last = out_dir / "checkpoints" / "last.ckpt"
    ckpt_path = meta = None
    dm = build_datamodule(cfg, None)  # split.json is written below, once the whole config has passed
    if cfg.get("resume") and last.is_file():
        ckpt = read_checkpoint(last)  # refuses pickled code before Lightning touches the file
        meta = ckpt["cosmoinfer"]
        check_resume_config(cfg, run_configs(cfg), dm, meta, last)  # the same run, or one line naming the key
        dm.split = DataMeta.from_dict(meta["data"]).split
        ckpt_path = str(last)
        log.info("resuming from %s (epoch %s)", last, ckpt.get("epoch"))
    dm.setup("fit")  # raises on an empty validation split
    if meta is not None:
        check_resume_data(dm, meta, last)
    if cfg.get("resume"):
        # a run killed while writing a checkpoint leaves AtomicCheckpointIO's temporary file behind
        for stale in (out_dir / "checkpoints").glob(".*.ckpt.*.tmp"):
            stale.unlink(missing_ok=True)
    module = build_module(cfg, dm)
    trainer = build_trainer(cfg, out_dir)
    save_split(dm.split, out_dir / "split.json")
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    ckpt_cb = trainer.checkpoint_callback
    score = ckpt_cb.best_model_score if ckpt_cb is not None else None
    if trainer.is_global_zero:
        log.info("finished: best checkpoint %s (val/loss %s) in %s", getattr(ckpt_cb, "best_model_path", None),
                 None if score is None else float(score), out_dir)
    return None if score is None else float(score)
