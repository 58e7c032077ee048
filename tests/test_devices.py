"""Parallel local jobs and GPUs: one card is shared, several are handed out one job per card first."""

from __future__ import annotations

import tempfile

import pytest
import torch
from omegaconf import OmegaConf

from ftsweep.train import devices


@pytest.fixture
def gpus(monkeypatch, tmp_path):
    """gpus(n): pretend n CUDA devices and a parallel launcher; returns the set_device calls."""
    selected = []

    def fake(n: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "set_device", selected.append)
        monkeypatch.setattr(devices, "parallel_local", lambda: True)
        monkeypatch.setattr(devices, "_claimed", None)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        return selected

    return fake


def _worker(running: list):
    """resolve_device in a fresh worker process; the earlier workers keep running (and their locks)."""
    if devices._claimed is not None:
        running.append(devices._claimed)
    devices._claimed = None
    return devices.resolve_device(OmegaConf.create({"device": "auto", "precision": "auto", "num_threads": None}))


def test_jobs_share_a_single_gpu_without_claiming_it(gpus, tmp_path):
    selected, running = gpus(1), []
    for _ in range(3):
        device, dtype = _worker(running)
        assert device == torch.device("cuda") and dtype == torch.bfloat16
    assert selected == [] and running == [] and not list(tmp_path.glob("ftsweep-gpu-locks-*/*"))


def test_each_job_claims_its_own_gpu_before_any_gpu_gets_two(gpus):
    selected, running = gpus(2), []
    assert [_worker(running)[0].index for _ in range(4)] == [0, 1, 0, 1]  # GPU 0 gets a second job only third
    assert selected == [torch.device("cuda", i) for i in (0, 1, 0, 1)]
    running[0][1].close()  # the first job ends: its GPU is free again
    assert _worker(running)[0] == torch.device("cuda", 0)
    for _, handle in running:
        handle.close()


def test_a_slurm_job_uses_the_cpus_it_was_given(monkeypatch):
    import torch
    from omegaconf import OmegaConf

    from ftsweep.train.devices import resolve_device

    before = torch.get_num_threads()
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    try:
        resolve_device(OmegaConf.create({"device": "cpu", "precision": "auto", "num_threads": None}))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
