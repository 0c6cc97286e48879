"""Checks on training settings that would otherwise fail deep inside Lightning or torch.

:func:`check_train_config` runs before any data is read (so nothing, not even ``split.json``, is
written for a config that cannot train): ``trainer.max_epochs`` / ``min_epochs`` / ``max_steps``
are integers, ``optimizer.lr`` is a positive number and ``optimizer.weight_decay`` is not negative,
and ``trainer.accelerator`` / ``trainer.devices`` name devices this machine has
(:func:`check_accelerator`). Each problem is one :class:`~cosmoinfer.errors.InputError` naming the key.
"""

from __future__ import annotations

import math

from cosmoinfer.errors import InputError


def _integer(value, key: str, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(key, f"must be an integer, got {value!r}")
    if value < minimum:
        raise InputError(key, f"must be an integer >= {minimum}{' (-1: no limit)' if minimum == -1 else ''}, "
                              f"got {value}")


def _number(value, key: str, positive: bool) -> None:
    if value is None:
        return
    try:
        x = float(value)
        if isinstance(value, bool):
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(key, f"must be a number, got {value!r}") from None
    if not math.isfinite(x) or (x <= 0 if positive else x < 0):
        raise InputError(key, f"must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _device_indices(devices) -> list[int] | None:
    """The GPU indices ``devices`` names (a list, or a string ``"0,2"``); None for a count or ``auto``."""
    if not isinstance(devices, (str, bytes)) and hasattr(devices, "__iter__"):  # a list (or ListConfig)
        return [int(d) for d in devices]
    if isinstance(devices, str) and "," in devices:
        return [int(d) for d in devices.split(",") if d.strip()]
    return None


def check_accelerator(accelerator, devices, key: str = "trainer") -> None:
    """Refuse a GPU accelerator on a machine without one, or ``devices`` naming GPUs that do not exist."""
    acc = str(accelerator or "auto").lower()
    try:
        indices = _device_indices(devices)
    except ValueError:
        raise InputError(f"{key}.devices", f"must be a count, a list of GPU indices or auto, got {devices!r}") from None
    count = _cuda_count()
    if acc == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise InputError(f"{key}.accelerator", "is mps, but this machine has no Apple GPU; use trainer=cpu")
        return
    if acc == "cpu" or (acc == "auto" and count == 0):
        if indices is not None:
            why = "trainer.accelerator is cpu" if acc == "cpu" else "torch sees no CUDA GPU on this machine"
            raise InputError(f"{key}.devices", f"names GPUs {indices}, but {why}; on the CPU set trainer.devices "
                                               f"to a number of processes (1)")
        if devices not in (None, "auto") and (isinstance(devices, bool) or not str(devices).lstrip("-").isdigit()
                                              or int(devices) < 1):
            raise InputError(f"{key}.devices", f"must be a number of processes >= 1 on the CPU, got {devices!r}")
        return
    if acc not in ("gpu", "cuda"):
        return
    if count == 0:
        raise InputError(f"{key}.accelerator", f"is {accelerator}, but torch sees no CUDA GPU on this machine "
                                               f"(torch.cuda.device_count() = 0); use trainer=cpu")
    if indices is not None:
        missing = [i for i in indices if not 0 <= i < count]
        if missing:
            raise InputError(f"{key}.devices", f"names GPU {missing[0]}, but this machine has {count} "
                                               f"(indices 0..{count - 1})")
        return
    if devices in (None, "auto", -1, "-1"):
        return
    try:
        n = int(devices)
    except (TypeError, ValueError):
        raise InputError(f"{key}.devices", f"must be a count, a list of GPU indices or auto, got {devices!r}") from None
    if n > count:
        raise InputError(f"{key}.devices", f"asks for {n} GPUs, but this machine has {count}")
    if n < 1:
        raise InputError(f"{key}.devices", f"must be >= 1 (or -1 / auto: every GPU), got {n}")


def check_train_config(cfg) -> None:
    """Refuse trainer and optimizer settings that cannot work, before any data is read."""
    trainer = cfg.get("trainer") or {}
    _integer(trainer.get("max_epochs"), "trainer.max_epochs", -1)
    _integer(trainer.get("min_epochs"), "trainer.min_epochs", 0)
    _integer(trainer.get("max_steps"), "trainer.max_steps", -1)
    optimizer = cfg.get("optimizer") or {}
    _number(optimizer.get("lr"), "optimizer.lr", positive=True)
    _number(optimizer.get("weight_decay"), "optimizer.weight_decay", positive=False)
    check_accelerator(trainer.get("accelerator"), trainer.get("devices"))


def check_device(device, key: str = "device") -> None:
    """Refuse an evaluation ``device`` (``cpu``, ``cuda``, ``cuda:1``) this machine does not have."""
    import torch

    name = str(device or "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(key, f"unknown device {name!r}; use cpu, cuda or cuda:<index>") from None
    if dev.type == "cuda":
        count = _cuda_count()
        if count == 0:
            raise InputError(key, f"is {name}, but torch sees no CUDA GPU on this machine; use device=cpu")
        if dev.index is not None and dev.index >= count:
            raise InputError(key, f"names GPU {dev.index}, but this machine has {count} (indices 0..{count - 1})")
