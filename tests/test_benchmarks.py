"""The benchmark scripts run end to end at smoke size and print their numbers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, at_once

pytestmark = pytest.mark.slow


def _scripts(tmp: Path) -> dict[str, list[str]]:
    return {"test_throughput_smoke": ["benchmarks/throughput.py", "--smoke"],
            "test_lr_logging_overhead_smoke": ["benchmarks/lr_logging_overhead.py", "--repeats", "1", "model=tiny",
                                               "data.max_rows=64", "trainer.max_length=32"],
            "test_gpu_check_smoke": ["benchmarks/gpu_check.py", "--smoke", "--out", str(tmp / "check.json")]}


def _run(args: list[str]) -> subprocess.CompletedProcess:
    # one torch thread each: three scripts side by side on two cores would stall in OpenMP's barriers
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory):
    """The selected tests' scripts, started together (at smoke size they are mostly imports and
    setup, which overlap): test name -> (future of its CompletedProcess, its folder)."""
    tmp = tmp_path_factory.mktemp("benchmarks")
    scripts = _scripts(tmp)
    wanted = {item.originalname for item in request.session.items
              if getattr(item, "module", None) is request.module and item.originalname in scripts}
    with at_once() as start:
        yield {name: (start(_run, args), tmp) for name, args in scripts.items() if name in wanted}


def _stdout(smoke_runs, name: str) -> tuple[str, Path]:
    future, tmp = smoke_runs[name]
    out = future.result()
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout, tmp


def test_throughput_smoke(smoke_runs):
    text, _ = _stdout(smoke_runs, "test_throughput_smoke")
    for label in ("ftsweep", "plain loop (pad 64)", "HF Trainer (pad 64)"):
        assert re.search(rf"{re.escape(label)}\s+[\d.]+ samples/s", text), text
    assert re.search(r"ftsweep / HF Trainer\s+[\d.]+x", text)
    assert re.search(r"frequent evaluation adds\s+[+-][\d.]+ %", text)
    assert re.search(r"\[3\] full CV: .*\n\s+wall time\s+[\d.]+ s", text)


def test_lr_logging_overhead_smoke(smoke_runs):
    text, _ = _stdout(smoke_runs, "test_lr_logging_overhead_smoke")
    assert re.search(r"overhead \(wall, noisy\)\s+:\s+[+-][\d.]+ %", text), text
    assert re.search(r"time in LR logging calls\s+:\s+[\d.]+ s = [\d.]+ % of the fold", text)


def test_gpu_check_smoke(smoke_runs):
    """Every section that needs no compiling runs in a process of its own; the probe that sleeps
    past its 2 s limit comes back as a timeout, with what it noted, and the next section still runs."""
    text, tmp = _stdout(smoke_runs, "test_gpu_check_smoke")
    report = json.loads((tmp / "check.json").read_text())
    assert list(report)[0] == "environment"
    env = report["environment"]
    assert {"python", "torch", "cuda", "cudnn"} <= set(env) and env["runtime"]["device"].startswith("CPU")
    assert {"transformers", "typing-extensions", "anyio", "protobuf", "numpy"} <= set(env["packages"])
    sections = report["sections"]
    assert list(sections) == ["throughput", "timeout_probe", "compiled", "compiled_hf", "eval_cost", "memory", "cv",
                              "cv_compiled", "cli", "folds", "large"]
    assert [n for n, s in sections.items() if "skipped" in s] == ["compiled", "compiled_hf", "cv_compiled"]
    probe = sections["timeout_probe"]
    assert probe["timeout"] == 2 and probe["partial"] == {"sleeping_s": 30.0} and probe["section_s"] < 15
    assert re.search(r"timeout_probe: TIMEOUT \([\d.]+ s\)\n.*eval_cost: up to", text)
    assert not [n for n, s in sections.items() if "error" in s or ("timeout" in s and n != "timeout_probe")], text
    tp = sections["throughput"]
    assert set(tp["samples_per_s"]) == {"ftsweep eager", "plain bf16 loop", "HF Trainer pad", "HF Trainer best"}
    assert tp["profile_eager"]["wall_ms_per_step"] > 0 and tp["profile_eager"]["gpu_busy_pct"] is None
    head = report["headline"]
    assert head["ratio_eager"] == tp["samples_per_s"]["ftsweep eager"] / max(
        tp["samples_per_s"]["HF Trainer pad"], tp["samples_per_s"]["HF Trainer best"])
    assert head["missing"] == ["ftsweep compiled", "hf compiled"] and not head["like_for_like"]
    phases = sections["eval_cost"]["profile"]["frequent"]["phases"]
    assert {"forward_backward", "optimizer", "evaluation", "host_sync"} <= set(phases)
    cv = sections["cv"]
    assert head["cv_seconds"] == cv["seconds"] > 0 and cv["profile"]["phases"]["mlflow"]["count"] > 0
    assert sections["cli"]["runs_by_status"] == {"FINISHED": 7}  # 2 rows x (parent + 2 folds) + the table and sections["cli"]["table_printed"]
    # 96 rows, 4:1: 76 training rows in batches of 8 = 10 batches, evaluated after the 10th (every 10) only
    assert sections["eval_cost"]["rows"] == 96 and sections["eval_cost"]["evaluations"] == 1
    # one config's 2 folds of 60 rows (30 training rows, batch 16: 2 steps each) in one job, then as 2 fold jobs
    # (joblib, one worker): one parent each, the same CV to the digit
    folds = sections["folds"]
    for run in (folds["one_job"], folds["workers_1_on_one_gpu"]):
        assert run["samples_per_s"] * run["training_span_s"] == pytest.approx(2 * 2 * 16, rel=1e-9)
    assert folds["workers_1_on_one_gpu"]["rmse_mean"] == folds["one_job"]["rmse_mean"]
    assert folds["workers_1_on_one_gpu"]["rmse_oof"] == folds["one_job"]["rmse_oof"]
    assert sections["large"]["tiny"]["gradient_checkpointing"] and sections["large"]["tiny"]["batch"] == "16 x 2"
    assert re.search(r"ratio_vs_hf\s+[\d.]+\s+>= 3\s+n/a \(smoke\)", text)


def test_replay_counts_false_prunes_as_defined_and_reports_the_closest_pruned_trial():
    """What a pruner's mistakes are: pruned trials that beat the best or whose fold-paired interval
    against it holds 0 (one diverged fold makes that interval wide), and the closest one's gap."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("replay_pruners", ROOT / "benchmarks" / "replay_pruners.py")
    replay = importlib.util.module_from_spec(spec)
    sys.modules["replay_pruners"] = replay  # its dataclasses look their module up there
    spec.loader.exec_module(replay)
    folds = [0, 1, 2, 3, 4]
    stored = [replay.StoredTrial(0, True, folds, [0.50, 0.50, 0.50, 0.50, 0.50], []),  # the best
              replay.StoredTrial(1, True, folds, [0.51, 0.49, 0.50, 0.52, 0.50], []),  # +0.004, not detected
              replay.StoredTrial(2, True, folds, [0.50, 0.50, 1.00, 0.50, 0.50], []),  # one diverged fold
              replay.StoredTrial(3, True, folds, [0.60, 0.61, 0.60, 0.61, 0.60], []),  # clearly worse
              replay.StoredTrial(4, False, [0], [0.70], [])]  # stopped live: never complete
    result = replay.Replay("x", pruned={1: 0, 2: 1, 3: 0, 4: 0})
    assert replay.false_prunes(result, stored) == [1, 2]
    (number, gap), = [replay.closest_pruned(result, stored)]
    assert number == 1 and gap == pytest.approx(0.004)
    assert replay.closest_pruned(replay.Replay("none"), stored) is None
