"""Device, precision and CPU threads for one job, aware of parallel local launchers.

Parallel jobs on one machine (hydra/launcher=joblib or submitit_local) each get one
torch thread on the CPU. On a one-GPU box they share the card: no claim, CUDA
time-slices between the processes, which keeps a small model's card busy while each
job waits on Python. On a multi-GPU box each worker process claims a GPU of its own
for its lifetime (a file lock per GPU and slot): every GPU gets one job before any
gets a second.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile

import torch
from omegaconf import DictConfig

from ftsweep.errors import ConfigError

log = logging.getLogger("ftsweep")
PARALLEL_LAUNCHERS = ("JoblibLauncher", "submitit_launcher.LocalLauncher")
_claimed: tuple[int, object] | None = None  # (gpu index, open lock file) held by this process


def launcher_target() -> str:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    return str(HydraConfig.get().launcher.get("_target_", ""))


def parallel_local() -> bool:
    return any(name in launcher_target() for name in PARALLEL_LAUNCHERS)


def claim_gpu(n_gpus: int, max_per_gpu: int = 64) -> int:
    """The least-claimed GPU (slot 0 of every GPU, then slot 1, ...); held until the process exits."""
    global _claimed
    if _claimed is not None:
        return _claimed[0]
    folder = os.path.join(tempfile.gettempdir(), f"ftsweep-gpu-locks-{os.getuid()}")
    os.makedirs(folder, exist_ok=True)
    for slot in range(max_per_gpu):
        for index in range(n_gpus):
            name = f"gpu{index}.lock" if slot == 0 else f"gpu{index}.{slot}.lock"
            handle = open(os.path.join(folder, name), "w")  # noqa: SIM115 (held for the process's life)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            if slot:
                log.info("more parallel jobs than GPUs (%d): this job shares GPU %d", n_gpus, index)
            _claimed = (index, handle)
            return index
    log.warning("over %d jobs per GPU: this job shares GPU 0 unclaimed", max_per_gpu)
    return 0


def cuda_visible() -> bool:
    return torch.cuda.is_available()


def resolve_device(tcfg: DictConfig) -> tuple[torch.device, torch.dtype | None]:
    """The device and the autocast dtype (None: plain fp32); sets CPU threads for parallel jobs."""
    if tcfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu.")
    use_cuda = tcfg.device in ("auto", "cuda") and torch.cuda.is_available()
    if tcfg.get("num_threads"):
        torch.set_num_threads(int(tcfg.num_threads))
    elif os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))  # torch would take every core of the node
    elif parallel_local() and not use_cuda:
        torch.set_num_threads(1)  # n parallel jobs x all cores each would thrash
    if use_cuda and parallel_local() and torch.cuda.device_count() > 1:  # one GPU: the jobs share it, no claim
        device = torch.device("cuda", claim_gpu(torch.cuda.device_count()))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cuda" if use_cuda else "cpu")
    if tcfg.precision == "fp32":
        return device, None
    if tcfg.precision == "bf16" or device.type == "cuda":
        return device, torch.bfloat16
    return device, None
