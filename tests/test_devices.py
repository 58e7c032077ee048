"""Parallel local jobs and GPUs: one card is shared, several are handed out one job per card first."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
from omegaconf import OmegaConf

from ftsweep.train import devices


@pytest.fixture
def gpus(monkeypatch, tmp_path):
    """gpus(n): pretend n CUDA devices (CUDA not started yet) and a parallel launcher; returns the
    set_device calls."""
    selected = []

    def fake(n: int, started: int | None = None):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "set_device", selected.append)
        monkeypatch.setattr(devices, "started_devices", lambda: 1 if started is None else started)
        monkeypatch.setattr(devices, "parallel_local", lambda: True)
        monkeypatch.setattr(devices, "_claimed", None)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # restored (or removed again) after the test
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
        return selected

    return fake


def _worker(running: list, per_gpu: int = 1, visible: str | None = None):
    """resolve_device in a fresh worker process (the launcher's environment, CUDA_VISIBLE_DEVICES as given);
    the earlier workers keep running (and their worker numbers). Returns (device, what the worker sees)."""
    if devices._claimed is not None:
        running.append(devices._claimed)
    devices._claimed = None
    if visible is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    device, _ = devices.resolve_device(OmegaConf.create({"device": "auto", "precision": "auto", "num_threads": None,
                                                         "workers_per_gpu": per_gpu}))
    return device, os.environ.get("CUDA_VISIBLE_DEVICES")


def test_jobs_share_a_single_gpu_without_claiming_it(gpus, tmp_path):
    selected, running = gpus(1), []
    for _ in range(3):
        device, dtype = devices.resolve_device(OmegaConf.create({"device": "auto", "precision": "auto",
                                                                 "num_threads": None}))
        assert device == torch.device("cuda") and dtype == torch.bfloat16
    assert selected == [] and running == [] and not list(tmp_path.glob("ftsweep-gpu-locks-*/*"))
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


@pytest.mark.parametrize(("n_gpus", "per_gpu", "gpus_of_workers"), [
    (2, 1, [0, 1, 0, 1, 0]),  # a GPU each while there are GPUs, then round again
    (2, 2, [0, 0, 1, 1, 0]),  # two workers packed on each GPU
    (4, 2, [0, 0, 1, 1, 2, 2, 3, 3, 0]),
    (3, 5, [0, 0, 0, 0, 0, 1]),
    (1, 1, [0, 0, 0]),
])
def test_which_gpu_each_worker_gets(n_gpus, per_gpu, gpus_of_workers):
    assert [devices.worker_gpu(w, n_gpus, per_gpu) for w in range(len(gpus_of_workers))] == gpus_of_workers


def test_each_worker_sees_only_its_gpu_one_per_gpu_before_any_gpu_gets_two(gpus):
    selected, running = gpus(2), []
    seen = [_worker(running) for _ in range(4)]
    assert seen == [(torch.device("cuda", 0), gpu) for gpu in ("0", "1", "0", "1")]  # GPU 0 gets a second job third
    assert selected == [torch.device("cuda", 0)] * 4  # cuda:0 is the one GPU each worker sees
    running[0][1].close()  # the first worker ends: its number (and so its GPU) is free again
    assert _worker(running) == (torch.device("cuda", 0), "0")
    for _, handle in running:
        handle.close()


def test_workers_per_gpu_packs_workers_and_keeps_the_launchers_own_device_list(gpus):
    gpus(2)
    running: list = []
    seen = [_worker(running, per_gpu=2, visible="4,6")[1] for _ in range(5)]
    assert seen == ["4", "4", "6", "6", "4"]  # its GPUs 0 and 1 are the machine's 4 and 6
    for _, handle in [*running, devices._claimed]:
        handle.close()


def test_a_worker_whose_cuda_started_before_gets_its_gpu_by_index(gpus):
    """CUDA_VISIBLE_DEVICES is read when CUDA starts: too late, the worker picks the device by index."""
    selected = gpus(2, started=2)
    running: list = []
    assert [_worker(running)[0] for _ in range(2)] == [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert selected == [torch.device("cuda", 0), torch.device("cuda", 1)]
    for _, handle in [*running, devices._claimed]:
        handle.close()


def test_a_slurm_job_uses_the_cpus_it_was_given(monkeypatch):
    import torch
    from omegaconf import OmegaConf

    from ftsweep.train.devices import resolve_device

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")  # the tests run with one thread (conftest)
    resolve_device(OmegaConf.create({"device": "cpu", "precision": "auto", "num_threads": None}))
    assert torch.get_num_threads() == 2
