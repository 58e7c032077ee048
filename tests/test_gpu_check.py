"""The GPU check's logic that a CPU can test: its plan, the busy share of a profile, the phase
clock's device timing, the like-for-like headline, and the CUDA-only memory branch (torch.cuda
stood in for). The check itself runs at smoke size in test_benchmarks.py."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent

from ftsweep.train.phases import PhaseClock

from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_plan import IMPORTS_S, LIMIT_S, PLAN, headline  # noqa: E402
from profiling import device_busy, timed_methods, top_device_ops  # noqa: E402


def _cpu_op(name: str, start: float, end: float, kernels: list[tuple[str, float]]) -> FunctionEvent:
    event = FunctionEvent(id=0, name=name, thread=0, start_us=start, end_us=end, use_device="cuda")
    for kernel, duration in kernels:
        event.append_kernel(kernel, 0, duration)
    return event


def _kernel(name: str, start: float, end: float, annotation: bool = False) -> FunctionEvent:
    return FunctionEvent(id=0, name=name, thread=0, start_us=start, end_us=end, use_device="cuda",
                         device_type=DeviceType.CUDA, is_user_annotation=annotation)


def _trace() -> list[FunctionEvent]:
    """1,000 µs of steps: the CPU ops that launched each kernel carry its time too (as torch.profiler
    records them), two kernels overlap on two streams, a copy runs on the device, and the optimizer
    step's record_function range shows on the device timeline as an annotation, gaps included."""
    return [
        _kernel("Optimizer.step#AdamW.step", 0, 1000, annotation=True),
        _cpu_op("aten::mm", 0, 50, [("gemm", 400)]), _kernel("gemm", 100, 500),
        _cpu_op("aten::add", 60, 80, [("add_kernel", 200)]), _kernel("add_kernel", 400, 600),  # overlaps gemm
        _cpu_op("aten::copy_", 90, 95, [("Memcpy HtoD", 100)]), _kernel("Memcpy HtoD", 700, 800),
        _cpu_op("optimizer step", 600, 990, []),
    ]


def test_busy_share_counts_each_kernel_once_and_never_exceeds_100_pct():
    events = _trace()
    old = sum(e.self_device_time_total for e in events) / 1000  # the old sum: 1.4, launching ops included
    assert old > 1.0
    busy = device_busy(events, wall_us=1000)
    # union of [100, 600] and [700, 800]: 600 µs of 1,000
    assert busy == {"busy_us": 600.0, "busy_pct": 60.0, "device_events": 3}
    assert device_busy(events * 3, wall_us=1000)["busy_pct"] == 60.0  # the same kernels seen again add nothing
    assert top_device_ops(events) == {"gemm": 400.0, "add_kernel": 200.0, "Memcpy HtoD": 100.0}
    assert device_busy([e for e in events if e.device_type == DeviceType.CPU], 1000)["busy_pct"] == 0.0


class FakeEvent:
    """A CUDA timing event on a made-up device clock."""

    now = 0.0
    synced = 0

    def record(self):
        self.at = FakeEvent.now

    def elapsed_time(self, end):
        return end.at - self.at

    def synchronize(self):
        FakeEvent.synced += 1


def test_phase_clock_self_time_and_device_time(monkeypatch):
    host = iter([0.0, 1.0, 1.5, 4.0, 10.0, 12.0])  # perf_counter at each enter / exit, in order
    monkeypatch.setattr("ftsweep.train.phases.time", SimpleNamespace(perf_counter=lambda: next(host)))
    clock = PhaseClock(FakeEvent, device_phases=("forward_backward",))
    with clock.phase("forward_backward"):  # 0 -> 4, batching inside 1 -> 1.5
        FakeEvent.now = 2.0
        with clock.phase("batching"):
            pass
        FakeEvent.now = 7.0
    FakeEvent.now = 9.0
    with clock.phase("mlflow"):  # 10 -> 12: no device events (not a device phase)
        pass
    summary = clock.summary(wall_s=20.0)
    assert FakeEvent.synced == 1  # one wait, at the end
    phases = summary["phases"]
    assert phases["forward_backward"] == {"s": 3.5, "pct": 17.5, "count": 1, "device_s": 0.007}
    assert phases["batching"] == {"s": 0.5, "pct": 2.5, "count": 1}
    assert phases["mlflow"] == {"s": 2.0, "pct": 10.0, "count": 1}
    assert summary["outside_phases_s"] == 14.0


def test_timed_methods_times_the_outer_call_once_and_restores():
    class Store:
        def __init__(self):
            self.n = 0

        def log(self):
            self.n += 1
            return self.save()

        def save(self):
            return self.n

    clock = PhaseClock()
    original = Store.log
    with timed_methods(Store, clock, "mlflow"):
        store = Store()
        assert store.log() == 1
    assert clock.count["mlflow"] == 2  # the constructor and log(); save() ran inside log()
    assert Store.log is original


def test_plan_parts_fit_eight_minutes_and_cover_every_section():
    from gpu_sections import SECTIONS

    assert [p.name for p in PLAN] == list(SECTIONS)
    for part in (1, 2):
        assert IMPORTS_S + sum(p.seconds for p in PLAN if p.part == part) <= LIMIT_S == 480
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--plan"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "part 1 (run first): 460 s at most" in out.stdout and "part 2: 480 s at most" in out.stdout
    assert "  compiled_hf   135 s  HF Trainer best settings + torch_compile=True" in out.stdout


def test_headline_is_like_for_like_best_vs_best():
    sections = {"throughput": {"samples_per_s": {"ftsweep eager": 300.0, "HF Trainer pad": 100.0,
                                                 "HF Trainer best": 150.0, "plain bf16 loop": 400.0}},
                "compiled": {"samples_per_s": {"ftsweep compiled": 900.0}},
                "compiled_hf": {"samples_per_s": {"HF Trainer best compiled": 200.0}},
                "cv": {"seconds": 40.0}, "cv_compiled": {"seconds": 18.0}}
    head = headline(sections)
    assert head["ratio_eager"] == 2.0 and head["ratio_compiled"] == 4.5
    assert head["ratio_vs_hf"] == 4.5 and head["like_for_like"] and head["missing"] == []
    assert head["cv_seconds"] == 18.0
    # HF compiled cut at its limit: best vs best is then ftsweep compiled vs HF eager, and says so
    sections["compiled_hf"] = {"timeout": 135, "partial": {"warmup_done_after_s": 120}}
    head = headline(sections)
    assert head["ratio_vs_hf"] == 6.0 and not head["like_for_like"] and head["missing"] == ["hf compiled"]
    assert head["ratio_compiled"] is None


def test_cuda_memory_branch_reads_the_right_counters(monkeypatch):
    """The memory numbers come from CUDA-only calls: run that branch with torch.cuda stood in for."""
    from gpu_plan import Sizes
    from gpu_sections import GIB, Check

    calls = []
    fake = {"synchronize": lambda: calls.append("sync"), "empty_cache": lambda: calls.append("empty"),
            "reset_peak_memory_stats": lambda: calls.append("reset"), "mem_get_info": lambda: (70 * GIB, 80 * GIB),
            "max_memory_allocated": lambda: 2 * GIB, "max_memory_reserved": lambda: 3 * GIB,
            "memory_reserved": lambda: 2.5 * GIB}
    for name, fn in fake.items():
        monkeypatch.setattr(torch.cuda, name, fn)  # raises if torch.cuda has no such function
    check = Check(Sizes.smoke(), torch.device("cuda"), torch.bfloat16, ROOT, lambda **kw: None)
    check.fresh_memory()
    assert calls == ["sync", "empty", "reset"]
    assert check.memory() == {"allocated_peak_gib": 2.0, "reserved_peak_gib": 3.0, "device_used_gib": 10.0,
                              "device_total_gib": 80.0, "outside_allocator_gib": 7.5}


@pytest.mark.slow
def test_the_cli_runs_twice_in_one_process(tmp_path):
    """The folds section calls `python -m ftsweep` (in process) once per way of running the folds."""
    from gpu_plan import Sizes
    from gpu_sections import Check, _cli

    check = Check(Sizes.smoke(), torch.device("cpu"), None, tmp_path, lambda **kw: None)
    for _ in range(2):
        text, _ = _cli(check, ["--cfg", "job", "model=tiny"])
        assert "architecture:" in text and "model_type: bert" in text
