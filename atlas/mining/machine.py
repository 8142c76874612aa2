"""Settings that fit the machine: the batch size and the decoding workers that `mine` uses when not told.

On a CPU they are what they have always been (batch 64, decoding in the main process: the forward pass is the
bottleneck there, and worker processes would take cores from it).  With a CUDA GPU the forward is fast and
decoding is the bottleneck: every core but two decodes (at most 14, where the measured whole-process time
stopped improving on a 16-core host), and the batch grows with the GPU's memory (256 from 24 GiB, 128 from
12 GiB, else 64; the step of 256 images of ViT-L/14 in bfloat16 with mining's state needs about 10 GiB).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

GIB = 1 << 30


@dataclass(frozen=True)
class MachineFit:
    batch_size: int
    workers: int
    why: str  # what it was chosen from, for the line `mine` prints at its start


def fit_machine(device_type: str, cores: int, gpu_bytes: int = 0) -> MachineFit:
    """The batch size and decoding workers for a machine of ``cores`` CPU cores and (on "cuda") a GPU of
    ``gpu_bytes`` memory."""
    if device_type != "cuda":
        return MachineFit(64, 0, f"CPU, {cores} cores")
    batch = 256 if gpu_bytes >= 24 * GIB else 128 if gpu_bytes >= 12 * GIB else 64
    return MachineFit(batch, max(1, min(14, cores - 2)), f"{cores} cores, {gpu_bytes / GIB:.0f} GiB GPU")


def machine_fit(device: torch.device) -> MachineFit:
    """`fit_machine` for this process's cores (those it may run on) and ``device``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpu = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 0
    return fit_machine(device.type, cores, gpu)
