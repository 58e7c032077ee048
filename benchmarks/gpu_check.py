"""The GPU check: ftsweep on CUDA end to end, its speed against the HF Trainer, memory, parallel jobs.

    python benchmarks/gpu_check.py            # one GPU, <= 8 min on an H100: benchmarks/results/<date>-<gpu>.json
    python benchmarks/gpu_check.py --smoke    # every section, tiny, on the CPU (runs in the test suite)

Offline: models are random-init from their configs, the tokenizer and CommonLit's token lengths
ship in benchmarks/data/. Sections run in priority order while the time budget (--budget-s)
lasts; each one's numbers are written to the JSON as soon as it ends, so a run cut short keeps
what it measured. The training code is ftsweep's own (cv.fold.train_fold, run_cv, the CLI), never a copy.

  throughput  roberta-base shape, batch 8, CommonLit lengths: ftsweep (eager and compiled) vs the
              HF Trainer (padded to 256, and its best settings) vs a plain bf16 loop, one process;
              plus a profile of ftsweep's steps (how much of the wall time the GPU is busy)
  eval_cost   one fold with eval=frequent (every 10 batches) vs eval=epoch
  memory      peak GPU memory of a fold without and with SWA
  cv          full 5-fold x 5-epoch CV of the MiniLM-L6 shape on 2,834 CommonLit-length rows
  cli         `python -m ftsweep -m +sweep=table1 model=tiny cv.n_folds=2`: every run FINISHED, table printed
  jobs        1, 2 and 4 MiniLM jobs at once on one GPU (hydra/launcher=joblib): total throughput
  large       roberta-large / deberta-v3-large presets (accumulation, checkpointing): memory, speed
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

# This checkout's ftsweep, and on an offline box the wheels installed by `pip install --target .whl/site`.
PATHS = [str(p) for p in (Path(__file__).resolve().parents[1], Path(__file__).resolve().parents[1] / ".whl" / "site")
         if p.is_dir()]
sys.path[:0] = PATHS

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from ftsweep.cv.fold import train_fold  # noqa: E402
from ftsweep.model.regressor import load_backbone, random_backbone  # noqa: E402
from ftsweep.train.devices import resolve_device  # noqa: E402
from ftsweep.train.loop import FoldSplit, Runtime  # noqa: E402

from throughput import (  # noqa: E402
    ROOT,
    commonlit_lengths,
    compose_cfg,
    fold_eval_cost,
    synthetic_encoded,
    time_ftsweep,
    time_hf_trainer,
    time_plain_loop,
    timed_cv,
    train_flops_per_sample,
)

TOKENIZER = ROOT / "benchmarks" / "data" / "minilm_tokenizer"  # MiniLM's WordPiece files: no hub, no bundled model
RESULTS = ROOT / "benchmarks" / "results"
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}
# (section, key, "<=" or ">=", target): the targets on one H100
TARGETS = [("throughput", "ratio_vs_hf_best", ">=", 3.0), ("eval_cost", "overhead_pct", "<=", 25.0),
           ("cv", "seconds", "<=", 20.0), ("memory", "peak_gib_plain", "<=", 2.5),
           ("memory", "peak_gib_swa", "<=", 3.4)]


@dataclass
class Sizes:
    """What each section runs; `smoke()` shrinks every part to seconds on a CPU."""

    model: str = "roberta_base"
    batch: int = 8
    steps: int = 200
    width: int = 256
    pad: int = 32
    compile_modes: tuple[str, ...] = ("reduce-overhead",)
    fold_rows: int = 2834
    memory_steps: int = 100
    cv: list[str] = field(default_factory=lambda: [
        "model=minilm_l6", "model.source=config", "data.n_rows=2834", "data.words_per_passage=170",
        "data.max_rows=null", "trainer.max_length=256", "cv.n_folds=5", "trainer.epochs=5", "trainer.batch_size=8"])
    # tiny has 2 layers; the grouped-LLRD row needs 3 (optimizer.n_groups=3)
    cli: list[str] = field(default_factory=lambda: ["model=tiny", "cv.n_folds=2", "model.architecture.num_hidden_layers=3"])
    job_counts: tuple[int, ...] = (1, 2, 4)
    job: list[str] = field(default_factory=lambda: [
        "model=minilm_l6", "model.source=config", "data.n_rows=2834", "data.words_per_passage=170",
        "data.max_rows=null", "trainer.max_length=256", "cv.folds=[0]", "trainer.epochs=3", "trainer.batch_size=8"])
    large: tuple[str, ...] = ("roberta_large", "deberta_v3_large")
    large_steps: int = 20
    expect_s: dict[str, float] = field(default_factory=lambda: {  # H100 guesses, for the budget
        "throughput": 150, "eval_cost": 40, "memory": 25, "cv": 45, "cli": 90, "jobs": 100, "large": 40,
        "cv_compiled": 90})

    @classmethod
    def smoke(cls) -> Sizes:
        tiny_data = ["data.n_rows=60", "data.words_per_passage=12", "data.max_rows=null", "trainer.max_length=32"]
        return cls(model="tiny", steps=6, width=64, pad=8, compile_modes=(), fold_rows=96, memory_steps=8,
                   cv=["model=tiny", *tiny_data, "cv.n_folds=2", "trainer.epochs=1"],
                   cli=["model=tiny", "cv.n_folds=2", "model.architecture.num_hidden_layers=3", "data.max_rows=40",
                        "trainer.max_length=32", "scheduler.warmup_steps=2",  # 10 steps a fold: 50 would not fit
                        "trainer.num_threads=1"],
                   job_counts=(2,), job=["model=tiny", *tiny_data, "cv.folds=[0]", "trainer.epochs=1",
                                           "trainer.num_threads=1"],
                   large=("tiny",), large_steps=4, expect_s=dict.fromkeys(cls().expect_s, 1.0))


@dataclass
class Check:
    sizes: Sizes
    device: torch.device
    dtype: torch.dtype | None
    root: Path
    smoke: bool
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def base(self) -> list[str]:
        """The throughput model (random init) at the check's batch, width and padding, one epoch."""
        return [f"model={self.sizes.model}", "model.source=config", f"trainer.batch_size={self.sizes.batch}",
                f"trainer.max_length={self.sizes.width}", f"trainer.pad_to_multiple_of={self.sizes.pad}",
                "trainer.epochs=1", "head=pooler"]

    def cfg(self, *overrides: str):
        return compose_cfg([*self.base(), *overrides], self.root)

    def data(self, n_rows: int, vocab: int = 30000):
        lengths = commonlit_lengths(n_rows, self.rng, self.sizes.width)
        return synthetic_encoded(lengths, vocab, self.rng), self.rng.normal(-0.96, 1.03, n_rows), np.arange(n_rows)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None


def section_throughput(c: Check) -> dict:
    s = c.sizes
    encoded, targets, rows = c.data((s.steps + 60) * s.batch)
    out: dict = {"model": s.model, "batch": s.batch, "steps": s.steps, "mean_tokens": float(encoded.lengths.mean())}
    rates = {}
    for mode in ("eager", *s.compile_modes):
        cfg = c.cfg(*([] if mode == "eager" else [f"trainer.compile={mode}"]))
        c.reset_peak()
        warm, timed = time_ftsweep(cfg, encoded, targets, rows, c.device, c.dtype, s.steps,
                                   warmup=10 if mode == "eager" else 40)  # compiled: every shape bucket seen
        rates[f"ftsweep {mode}"] = s.batch * s.steps / timed
        out[f"ftsweep {mode}"] = {"samples_per_s": rates[f"ftsweep {mode}"], "warmup_s": warm, "peak_gib": c.peak_gib()}
    cfg = c.cfg()
    out["attn_implementation"] = _attention_of(cfg)
    rates["plain bf16 loop"] = s.batch * s.steps / time_plain_loop(cfg, encoded, targets, rows, c.device, c.dtype,
                                                                   s.steps, s.width)
    rates["HF Trainer pad"] = s.batch * s.steps / time_hf_trainer(cfg, encoded, targets, rows, c.device, c.dtype,
                                                                  s.steps, s.width)
    rates["HF Trainer best"] = s.batch * s.steps / time_hf_trainer(cfg, encoded, targets, rows, c.device, c.dtype,
                                                                   s.steps, s.width, best=True)
    best = max((k for k in rates if k.startswith("ftsweep")), key=rates.get)
    arch = cfg.model.architecture
    flops = train_flops_per_sample((arch.hidden_size, arch.num_hidden_layers, arch.intermediate_size),
                                   float(encoded.lengths.mean()))
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in _device_name(c.device)), None)
    out.update(samples_per_s=rates, best_ftsweep=best, ratio_vs_hf_best=rates[best] / rates["HF Trainer best"],
               ratio_vs_hf_pad=rates[best] / rates["HF Trainer pad"],
               ratio_vs_plain=rates[best] / rates["plain bf16 loop"],
               mfu_pct=100 * rates[best] * flops / (peak * 1e12) if peak else None,
               profile_eager=_profile(c, cfg, encoded, targets, rows),
               host_syncs=_host_syncs(c, cfg, encoded, targets, rows))
    return out


def _host_syncs(c: Check, cfg, encoded, targets, rows, steps: int = 20) -> dict | None:
    """GPU -> host syncs during eager training steps (CUDA's sync debug mode warns at each one):
    ftsweep itself syncs only when it flushes (every 25 steps) or evaluates, so more than that
    comes from inside the model (e.g. a data-dependent `if` on the attention mask)."""
    if c.device.type != "cuda":
        return None
    caught: list = []

    @contextlib.contextmanager
    def counting():
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode("default")
                caught.extend(w for w in record if "synchroniz" in str(w.message))

    steps = min(steps, c.sizes.steps)
    time_ftsweep(cfg, encoded, targets, rows, c.device, c.dtype, steps, warmup=3, around=counting)
    return {"steps": steps, "syncs": len(caught), "per_step": len(caught) / steps,
            "kinds": sorted({str(w.message)[:120] for w in caught})[:5]}


def _attention_of(cfg) -> str:
    with torch.device("meta"):
        return str(random_backbone(cfg.model).config._attn_implementation)


def _profile(c: Check, cfg, encoded, targets, rows, steps: int = 20) -> dict:
    """Where an eager step's time goes: wall vs time the GPU is busy, and the costliest ops."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if c.device.type == "cuda" else [])
    holder = {}

    def around():
        holder["prof"] = profile(activities=activities)
        return holder["prof"]

    steps = min(steps, c.sizes.steps)
    _, wall = time_ftsweep(cfg, encoded, targets, rows, c.device, c.dtype, steps, warmup=5, around=around)
    events = holder["prof"].key_averages()
    device_us = sum(getattr(e, "self_device_time_total", 0) for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    kernels = sorted(events, key=lambda e: getattr(e, "self_device_time_total", 0), reverse=True)[:8]
    return {
        "steps": steps, "wall_ms_per_step": 1e3 * wall / steps,
        "gpu_busy_ms_per_step": device_us / 1e3 / steps if c.device.type == "cuda" else None,
        "gpu_busy_pct": 100 * device_us / 1e6 / wall if c.device.type == "cuda" else None,
        "top_cpu_ops_ms_per_step": {e.key: e.self_cpu_time_total / 1e3 / steps for e in top},
        "top_gpu_ops_ms_per_step": {e.key: getattr(e, "self_device_time_total", 0) / 1e3 / steps for e in kernels}
        if c.device.type == "cuda" else {},
    }


def section_eval_cost(c: Check) -> dict:
    encoded, targets, _ = c.data(c.sizes.fold_rows)
    epoch_s, frequent_s, evaluations = fold_eval_cost(c.base(), c.root, encoded, targets, c.device, c.dtype)
    return {"rows": c.sizes.fold_rows, "epoch_s": epoch_s, "frequent_s": frequent_s, "evaluations": evaluations,
            "overhead_pct": 100 * (frequent_s - epoch_s) / epoch_s}


def section_memory(c: Check) -> dict:
    n_val = max(8, c.sizes.fold_rows // 5)  # a real fold's validation rows, at eval batch 128
    encoded, targets, rows = c.data(c.sizes.memory_steps * c.sizes.batch + n_val)
    out = {"steps": c.sizes.memory_steps}
    for name, extra in (("plain", []), ("swa", ["swa=on", "swa.start_epoch=null", "swa.start_fraction=0.5"])):
        cfg = c.cfg(*extra, f"trainer.max_steps={c.sizes.memory_steps}")
        backbone = load_backbone(cfg.model)
        c.reset_peak()
        split = FoldSplit(encoded, targets, rows[:-n_val], rows[-n_val:])
        res = train_fold(cfg, backbone, split, Runtime(c.device, c.dtype, 0))
        out[f"peak_gib_{name}"] = c.peak_gib()
        out[f"rmse_{name}"] = res.rmse_last
        del backbone, res
    return out


def section_cv(c: Check, modes: tuple[str, ...] = ("eager",)) -> dict:
    """Wall time of the whole run_cv (demo data generated, tokenised, 5 folds, MLflow), per compile mode."""
    over = [*c.sizes.cv, f"trainer.pad_to_multiple_of={c.sizes.pad}", f"model.tokenizer={TOKENIZER}"]
    out: dict = {"overrides": over}
    for mode in modes:
        seconds, mean_rmse = timed_cv([*over, f"trainer.compile={'false' if mode == 'eager' else mode}"], c.root)
        out[mode] = {"seconds": seconds, "rmse_mean": mean_rmse}
    out["seconds"] = min(v["seconds"] for v in out.values() if isinstance(v, dict))
    return out


def _cli(c: Check, args: list[str], timeout: float):
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "FTSWEEP_OUTPUTS", "FTSWEEP_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*PATHS, env.get("PYTHONPATH")]))
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "ftsweep", "-m", *args, f"model.tokenizer={TOKENIZER}",
                          f"paths.output_root={c.root}"], cwd=c.root, env=env, capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"exit {out.returncode}: {out.stderr[-2000:]}")
    return out, time.perf_counter() - t


def _runs(c: Check, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{c.root}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def section_cli(c: Check, timeout: float) -> dict:
    out, seconds = _cli(c, ["+sweep=table1", *c.sizes.cli], timeout)
    runs = _runs(c, "table1")
    status = {}
    for r in runs:
        status[r.info.status] = status.get(r.info.status, 0) + 1
    folds = [r for r in runs if "ftsweep.fold" in r.data.tags]
    parents = [r for r in runs if "ftsweep.fold" not in r.data.tags and r.data.tags.get("ftsweep.kind") != "table"]
    printed = "Results of sweep 'table1'" in out.stdout and "| Fine-tuning techniques |" in out.stdout
    devices = sorted({r.data.tags.get("ftsweep.device", "?") for r in parents})
    on_device = all(d.startswith(c.device.type) for d in devices)
    if not (status == {"FINISHED": len(runs)} and len(parents) == 7 and len(folds) == 14 and printed and on_device):
        raise AssertionError(f"runs by status {status}, {len(parents)} parents, {len(folds)} folds, "
                             f"table printed: {printed}, devices {devices}")
    return {"seconds": seconds, "runs_by_status": status, "parents": len(parents), "folds": len(folds),
            "table_printed": printed, "devices": devices}


def section_jobs(c: Check, timeout: float) -> dict:
    out: dict = {"gpus": torch.cuda.device_count()}
    for n in c.sizes.job_counts:
        seeds = ",".join(str(i) for i in range(n))
        name = f"jobs_{n}"
        _, wall = _cli(c, ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n}", f"trainer.seed={seeds}",
                           *c.sizes.job, f"trainer.pad_to_multiple_of={c.sizes.pad}", f"tracking.experiment={name}"],
                       timeout)
        runs = _runs(c, name)
        folds = [r for r in runs if "ftsweep.fold" in r.data.tags]
        params = {r.info.run_id: r.data.params for r in runs if "ftsweep.fold" not in r.data.tags}
        # the batch size is a parameter of the fold's parent run (fold runs log metrics only)
        samples = sum(int(params[r.data.tags["mlflow.parentRunId"]]["trainer.batch_size"]) * r.data.metrics["steps"]
                      for r in folds)
        span = (max(r.info.end_time for r in folds) - min(r.info.start_time for r in folds)) / 1e3
        out[name] = {"wall_s": wall, "training_span_s": span, "samples_per_s": samples / span,
                     "devices": sorted({r.data.tags.get("ftsweep.device", "?") for r in folds})}
    if "jobs_1" in out:
        out["speedup_vs_one_job"] = {k: v["samples_per_s"] / out["jobs_1"]["samples_per_s"]
                                     for k, v in out.items() if k.startswith("jobs_")}
    return out


def section_large(c: Check) -> dict:
    out = {}
    for preset in c.sizes.large:
        extra = [] if preset != "tiny" else ["trainer.grad_accum_steps=2", "trainer.gradient_checkpointing=true"]
        cfg = compose_cfg([f"model={preset}", "model.source=config", "trainer.epochs=1", "head=pooler",
                           f"trainer.pad_to_multiple_of={c.sizes.pad}", *extra], c.root)
        per_step = int(cfg.trainer.batch_size) * int(cfg.trainer.grad_accum_steps)
        encoded, targets, rows = c.data((c.sizes.large_steps + 10) * per_step)
        c.reset_peak()
        _, timed = time_ftsweep(cfg, encoded, targets, rows, c.device, c.dtype, c.sizes.large_steps, warmup=3)
        out[preset] = {"batch": f"{cfg.trainer.batch_size} x {cfg.trainer.grad_accum_steps}",
                       "gradient_checkpointing": bool(cfg.trainer.gradient_checkpointing),
                       "samples_per_s": per_step * c.sizes.large_steps / timed, "peak_gib": c.peak_gib()}
    return out


SECTIONS = {  # priority order: what the budget drops first comes last
    "throughput": lambda c, left: section_throughput(c),
    "eval_cost": lambda c, left: section_eval_cost(c),
    "memory": lambda c, left: section_memory(c),
    "cv": lambda c, left: section_cv(c),
    "cli": section_cli,
    "jobs": section_jobs,
    "large": lambda c, left: section_large(c),
    "cv_compiled": lambda c, left: section_cv(c, c.sizes.compile_modes),  # does compiling pay over a whole CV?
}


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"


def _met(value, op: str, target: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return "met" if (value <= target if op == "<=" else value >= target) else "MISSED"


def print_table(report: dict) -> None:
    rows = [("section", "measure", "value", "target", "")]
    for name, sec in report["sections"].items():
        if "skipped" in sec or "error" in sec:
            rows.append((name, "skipped" if "skipped" in sec else "ERROR", str(sec.get("skipped") or sec["error"])[:70], "", ""))
            continue
        for key, value in _flat(sec):
            target = next(((op, t) for s, k, op, t in TARGETS if s == name and k == key), None)
            status = "n/a (smoke)" if target and report["smoke"] else _met(value, *target) if target else ""
            rows.append((name, key, _fmt(value), f"{target[0]} {target[1]:g}" if target else "", status))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _flat(sec: dict, prefix: str = ""):
    for k, v in sec.items():
        if k in ("overrides", "top_cpu_ops_ms_per_step", "top_gpu_ops_ms_per_step", "kinds"):
            continue
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def _write(report: dict, out: Path, started: float) -> None:
    """After every section: a run cut short keeps what it measured."""
    report["total_s"] = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="every section at toy size on the CPU")
    p.add_argument("--budget-s", type=float, default=None, help="stop starting sections after this (default 450; smoke 600)")
    p.add_argument("--only", default="", help=f"comma-separated sections (of {', '.join(SECTIONS)})")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out")
    p.add_argument("--steps", type=int, default=None, help="throughput steps (default 200)")
    p.add_argument("--compile", default=None, help="compile modes to time besides eager, comma-separated ('' = none)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/<date>-<gpu>.json)")
    args = p.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; --smoke runs the CPU check", file=sys.stderr)
        return 2
    sizes = Sizes.smoke() if args.smoke else Sizes()
    if args.steps:
        sizes.steps = args.steps
    if args.compile is not None:
        sizes.compile_modes = tuple(m for m in args.compile.split(",") if m)
    if args.smoke:
        torch.set_num_threads(1)  # a shared CI machine
    root = Path(tempfile.mkdtemp(prefix="ftsweep-gpu-check-"))
    device, dtype = resolve_device(compose_cfg(["trainer.device=" + ("cpu" if args.smoke else "cuda")], root).trainer)
    name = _device_name(device)
    out = args.out or (root if args.smoke else RESULTS) / f"{dt.date.today()}-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.json"
    budget = args.budget_s or (600.0 if args.smoke else 450.0)
    report = {"date": dt.datetime.now().isoformat(timespec="seconds"), "device": name, "smoke": args.smoke,
              "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
              "cuda": torch.version.cuda, "precision": "bf16" if dtype else "fp32", "budget_s": budget,
              "targets": {f"{s}.{k}": f"{op} {t}" for s, k, op, t in TARGETS}, "sections": {}}
    print(f"gpu_check: {name}; torch {torch.__version__}; transformers {transformers.__version__}; budget {budget:.0f} s")
    check = Check(sizes, device, dtype, root, args.smoke)
    wanted = [s for s in SECTIONS if (not args.only or s in args.only.split(",")) and s not in args.skip.split(",")]
    started = time.perf_counter()
    for section in wanted:
        left = budget - (time.perf_counter() - started)
        if left < sizes.expect_s[section]:
            report["sections"][section] = {"skipped": f"budget: {left:.0f} s left, needs ~{sizes.expect_s[section]:.0f} s"}
            continue
        if section == "cv_compiled" and not sizes.compile_modes:
            report["sections"][section] = {"skipped": "no compile mode (--compile; smoke: compiling takes minutes on a CPU)"}
            continue
        print(f"[{time.perf_counter() - started:6.1f} s] {section} ...", flush=True)
        t = time.perf_counter()
        try:
            result = SECTIONS[section](check, left)
            report["sections"][section] = {**result, "section_s": time.perf_counter() - t}
        except Exception as exc:  # one broken section must not cost the others' numbers
            traceback.print_exc()
            report["sections"][section] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        _write(report, out, started)
    _write(report, out, started)
    print()
    print_table(report)
    print(f"\nwritten: {out}")
    return 1 if any("error" in s for s in report["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
