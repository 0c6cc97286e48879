"""GPU training throughput of the CMD CNN at 256^2: fp32, bf16 autocast, bf16 + channels-last.

Runs only with ``--gpu`` and a CUDA device; otherwise it records why it did not run (no error).
Each variant trains ``steps`` steps of ``cmd_cnn`` (default width, hidden 16) on in-memory batches
of 256^2 maps already on the device, after a warm-up (cuDNN autotuning), timed with CUDA
synchronisation; GPU utilisation is sampled with NVML (``pynvml``) or ``nvidia-smi`` while the
fp32 variant runs. The ratio recorded is the best variant's samples/s over fp32's (no target is
stated for it).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

from benchmarks.perf_common import Context, fmt, result

NO_GPU = "not measured: no GPU in this session"


def _utilisation_sampler():
    """A ``(start, stop) -> list[percent]`` pair sampling GPU 0's utilisation, or ``None``."""
    read = None
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)

        def read():
            return float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception:  # noqa: BLE001 - NVML is optional
        if shutil.which("nvidia-smi"):
            def read():
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", "0"], capture_output=True, text=True, timeout=5).stdout
                return float(out.strip().splitlines()[0])
    if read is None:
        return None
    samples: list[float] = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                samples.append(read())
            except Exception:  # noqa: BLE001
                pass
            stop.wait(0.2)

    th = threading.Thread(target=loop, daemon=True)
    return th, stop, samples


def _train_rate(grid: int, batch: int, steps: int, dtype, channels_last: bool) -> float:
    import torch

    from cosmoinfer.models.likelihoods import build_likelihood
    from cosmoinfer.models.network import build_network

    dev = torch.device("cuda")
    lik = build_likelihood("gaussian_nll", 2)
    net = build_network("cmd_cnn", 1, grid, lik.n_outputs, hidden=16, channels_last=channels_last).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, grid, grid, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.rand(batch, 2, device=dev)
    torch.backends.cudnn.benchmark = True

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            raw = net(x)
        lik.loss(raw, y).backward()
        opt.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def gpu(ctx: Context) -> dict:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_cuda = False
    if not has_cuda or not ctx.gpu:
        status = NO_GPU if not has_cuda else "not measured: CUDA is available but --gpu was not given"
        return result(ratio=None, target=None, direction=">=", figure="best GPU variant / fp32 samples/s",
                      summary=[["fp32, bf16 autocast, bf16 + channels-last (cmd_cnn, 256^2), GPU utilisation",
                                status, "none stated", "n/a"]],
                      notes=["Run `python -m benchmarks.run --gpu --only gpu` on a machine with CUDA to fill this "
                             "section."], status=status)
    import torch

    grid, batch, steps = (64, 8, 5) if ctx.quick else (256, 32, 30)
    variants = {"fp32": (None, False), "bf16 autocast": (torch.bfloat16, False),
                "bf16 autocast + channels-last": (torch.bfloat16, True)}
    rates, util = {}, None
    for name, (dtype, cl) in variants.items():
        sampler = _utilisation_sampler() if name == "fp32" else None
        if sampler:
            sampler[0].start()
        rates[name] = _train_rate(grid, batch, steps, dtype, cl)
        if sampler:
            sampler[1].set()
            sampler[0].join()
            util = sum(sampler[2]) / len(sampler[2]) if sampler[2] else None
        ctx.log(f"  {name}: {rates[name]:.1f} samples/s")
    best = max(rates, key=rates.get)
    ratio = rates[best] / rates["fp32"]
    return result(
        ratio=ratio, target=None, direction=">=", figure=f"best GPU variant ({best}) / fp32 samples/s",
        summary=[[f"{k}, cmd_cnn hidden 16, {grid}^2, batch {batch}", f"{fmt(v)} samples/s", "", ""]
                 for k, v in rates.items()] + [
            ["GPU utilisation during fp32 training (mean of 0.2 s samples)",
             "n/a (no NVML / nvidia-smi)" if util is None else f"{util:.0f}%", "", ""],
            [f"speed-up of {best} over fp32", fmt(ratio), "none stated", ""]],
        notes=[f"Device: {torch.cuda.get_device_name(0)}; in-memory batches on the device (no data loading), "
               f"{steps} timed steps after 5 warm-up steps, cudnn.benchmark on."],
        details={"rates": rates, "utilisation": util, "device": torch.cuda.get_device_name(0)},
    )
