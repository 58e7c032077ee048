"""Device, precision and CPU threads for one job, aware of parallel local launchers.

Parallel jobs on one machine (hydra/launcher=joblib or submitit_local) each get one
torch thread on the CPU. On a one-GPU box they share the card: no claim, CUDA
time-slices between the processes, which keeps a small model's card busy while each
job waits on Python. On a multi-GPU box each worker process claims a worker number for
its lifetime (the lowest free one: a lock file each) and sees one GPU, named alone in
its CUDA_VISIBLE_DEVICES: worker_gpu(worker, GPUs, trainer.workers_per_gpu) says which.
With 1 worker per GPU (the default) every GPU gets one job before any gets a second;
with k, k workers pack onto each GPU in turn.
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
_claimed: tuple[int, object] | None = None  # (worker number, open lock file) held by this process


def launcher_target() -> str:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    return str(HydraConfig.get().launcher.get("_target_", ""))


def parallel_local() -> bool:
    return any(name in launcher_target() for name in PARALLEL_LAUNCHERS)


def worker_gpu(worker: int, n_gpus: int, per_gpu: int = 1) -> int:
    """The GPU that parallel local worker `worker` (0, 1, ...) sees: per_gpu=1, a GPU of its own while
    there are GPUs (then the next worker shares GPU 0, ...); per_gpu=k packs workers 0..k-1 on GPU 0,
    the next k on GPU 1, ..., and past the last GPU starts again at GPU 0."""
    return (worker // per_gpu) % n_gpus


def claim_worker(most: int = 256) -> int:
    """The lowest worker number that no live process of this user holds; held until the process exits."""
    global _claimed
    if _claimed is not None:
        return _claimed[0]
    folder = os.path.join(tempfile.gettempdir(), f"ftsweep-gpu-locks-{os.getuid()}")
    os.makedirs(folder, exist_ok=True)
    for worker in range(most):
        handle = open(os.path.join(folder, f"worker{worker}.lock"), "w")  # noqa: SIM115 (held for the process's life)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _claimed = (worker, handle)
        return worker
    log.warning("over %d parallel workers: this one is counted as worker 0", most)
    return 0


def started_devices() -> int:
    """The GPUs CUDA's runtime sees in this process (starting it here if it has not started)."""
    return torch._C._cuda_getDeviceCount()


def pin_gpu(n_gpus: int, per_gpu: int) -> torch.device:
    """This worker's GPU, named alone in CUDA_VISIBLE_DEVICES (the job and what it starts see it as
    cuda:0). Where CUDA had started in this process before, the variable cannot take: the device is
    chosen by its index instead."""
    worker = claim_worker()
    gpu = worker_gpu(worker, n_gpus, per_gpu)
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    physical = listed[gpu] if len(listed) == n_gpus else str(gpu)
    os.environ["CUDA_VISIBLE_DEVICES"] = physical
    if worker >= n_gpus * per_gpu:
        log.info("more parallel workers than GPUs x trainer.workers_per_gpu (%d x %d): worker %d shares GPU %s",
                 n_gpus, per_gpu, worker, physical)
    if started_devices() == 1:
        return torch.device("cuda", 0)
    log.warning("CUDA had started in this worker before its GPU was chosen: it uses cuda:%d by index", gpu)
    return torch.device("cuda", gpu)


def device_name(device: torch.device) -> str:
    """The device as a run's tag says it: a GPU with the machine's GPUs this process sees (a parallel
    worker sees one, as cuda:0)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"{device} (CUDA_VISIBLE_DEVICES={visible})" if device.type == "cuda" and visible else str(device)


def cuda_visible() -> bool:
    return torch.cuda.is_available()


def resolve_device(tcfg: DictConfig) -> tuple[torch.device, torch.dtype | None]:
    """The device and the autocast dtype (None: plain fp32); sets CPU threads for parallel jobs, and
    gives a parallel worker on a multi-GPU machine its GPU (pin_gpu) before CUDA starts."""
    pinned = None
    # device_count() asks NVML, which leaves CUDA unstarted: CUDA_VISIBLE_DEVICES can still take
    if tcfg.device != "cpu" and parallel_local() and torch.cuda.device_count() > 1:
        pinned = pin_gpu(torch.cuda.device_count(), int(tcfg.get("workers_per_gpu") or 1))
    if tcfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu.")
    use_cuda = tcfg.device in ("auto", "cuda") and torch.cuda.is_available()
    if tcfg.get("num_threads"):
        torch.set_num_threads(int(tcfg.num_threads))
    elif os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))  # torch would take every core of the node
    elif parallel_local() and not use_cuda:
        torch.set_num_threads(1)  # n parallel jobs x all cores each would thrash
    device = pinned if use_cuda and pinned is not None else torch.device("cuda" if use_cuda else "cpu")
    if device.index is not None:
        torch.cuda.set_device(device)
    if tcfg.precision == "fp32":
        return device, None
    if tcfg.precision == "bf16" or device.type == "cuda":
        return device, torch.bfloat16
    return device, None
