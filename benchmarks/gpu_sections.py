"""The GPU check's sections. Each runs in a process of its own (gpu_check.py forks it from a
process that has already imported all of this), so its memory peaks are its own, a hung
compile is killed at its limit without costing the next section, and CUDA is set up fresh.

A section returns its numbers; while it runs it notes what it has so far (`Check.note`), so
a section cut at its limit still reports what it measured. The training code is ftsweep's
own (cv.fold.build_fold_model / train_model / train_fold, run_cv, the CLI), never a copy.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import runpy
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Imported here, in the fork server, so that no section pays for them: what transformers, MLflow,
# Hydra and the CLI would otherwise import lazily inside each section (seconds apiece).
import hydra_plugins.hydra_joblib_launcher.joblib_launcher  # noqa: F401
import mlflow  # noqa: F401
import mlflow.tracking  # noqa: F401
import numpy as np
import torch
import torch.profiler  # noqa: F401
import transformers.models.bert.modeling_bert  # noqa: F401
import transformers.models.deberta_v2.modeling_deberta_v2  # noqa: F401
import transformers.models.roberta.modeling_roberta  # noqa: F401
from transformers import Trainer  # noqa: F401

import ftsweep.cv.summary  # noqa: F401  (the CLI's imports; its __main__ runs afresh in _cli)
import ftsweep.search.pruning  # noqa: F401
import ftsweep.sweep.callback  # noqa: F401
from ftsweep.cv.fold import train_fold
from ftsweep.cv.pipeline import Job
from ftsweep.model.regressor import load_backbone, random_backbone
from ftsweep.tags import DEVICE_TAG, FOLD_TAG, KIND_TAG, TABLE_KIND  # noqa: E402
from ftsweep.tracking.store import Tracker
from ftsweep.train.devices import resolve_device
from ftsweep.train.loop import FoldSplit, Runtime
from ftsweep.train.phases import PhaseClock

from gpu_plan import PROBE, Sizes
from profiling import device_busy, timed_methods, top_device_ops
from throughput import (
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
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}
GIB = 2**30


class Notes:
    """What a section has measured so far, rewritten to its file at each note (atomically)."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def __call__(self, **values) -> None:
        self.data.update(values)
        write_json(self.path, self.data)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


@dataclass
class Check:
    sizes: Sizes
    device: torch.device
    dtype: torch.dtype | None
    root: Path
    note: Callable[..., None]
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

    def fresh_memory(self) -> None:
        """Nothing left over from a previous measurement: freed, returned to the driver, peaks reset."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def memory(self) -> dict | None:
        """Peaks since the last reset: allocated (tensors), reserved (the caching allocator's hold), and
        what the device has in use now (every process: this one's CUDA context included)."""
        if self.device.type != "cuda":
            return None
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        return {"allocated_peak_gib": torch.cuda.max_memory_allocated() / GIB,
                "reserved_peak_gib": torch.cuda.max_memory_reserved() / GIB,
                "device_used_gib": (total - free) / GIB, "device_total_gib": total / GIB,
                "outside_allocator_gib": (total - free - torch.cuda.memory_reserved()) / GIB}


def _mfu(c: Check, cfg, rate: float, mean_tokens: float) -> float | None:
    arch = cfg.model.architecture
    flops = train_flops_per_sample((arch.hidden_size, arch.num_hidden_layers, arch.intermediate_size), mean_tokens)
    name = torch.cuda.get_device_name(c.device) if c.device.type == "cuda" else ""
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    return 100 * rate * flops / (peak * 1e12) if peak else None


def _attention_of(cfg) -> str:
    with torch.device("meta"):
        return str(random_backbone(cfg.model).config._attn_implementation)


def section_throughput(c: Check) -> dict:
    """Eager, one process: ftsweep, a plain bf16 loop, the HF Trainer (pad 256 and its best)."""
    s = c.sizes
    encoded, targets, rows = c.data((s.steps + 60) * s.batch)
    cfg = c.cfg()
    mean_tokens = float(encoded.lengths.mean())
    out: dict = {"model": s.model, "batch": s.batch, "steps": s.steps, "mean_tokens": mean_tokens,
                 "attn_implementation": _attention_of(cfg), "samples_per_s": {}}
    rates = out["samples_per_s"]

    def measured(label: str, seconds: float) -> None:
        rates[label] = s.batch * s.steps / seconds
        c.note(samples_per_s=rates)

    measured("ftsweep eager", time_ftsweep(cfg, encoded, targets, rows, c.device, c.dtype, s.steps)[1])
    measured("plain bf16 loop", time_plain_loop(cfg, encoded, targets, rows, c.device, c.dtype, s.steps, s.width))
    measured("HF Trainer pad", time_hf_trainer(cfg, encoded, targets, rows, c.device, c.dtype, s.steps, s.width)[1])
    measured("HF Trainer best", time_hf_trainer(cfg, encoded, targets, rows, c.device, c.dtype, s.steps, s.width,
                                                best=True)[1])
    out["mfu_pct_ftsweep_eager"] = _mfu(c, cfg, rates["ftsweep eager"], mean_tokens)
    out["profile_eager"] = _profile(c, cfg, encoded, targets, rows)
    c.note(profile_eager=out["profile_eager"])
    out["host_syncs"] = _host_syncs(c, cfg, encoded, targets, rows)
    return out


def section_compiled(c: Check) -> dict:
    """ftsweep with trainer.compile: warm-up (compiling, a graph per shape bucket), then the timed steps."""
    s = c.sizes
    encoded, targets, rows = c.data((s.steps + 60) * s.batch)
    cfg = c.cfg(f"trainer.compile={s.compile_mode}")
    started = time.perf_counter()
    warm, timed = time_ftsweep(cfg, encoded, targets, rows, c.device, c.dtype, s.steps, warmup=s.compile_warmup,
                               around=lambda: _noting(c, started))
    rate = s.batch * s.steps / timed
    return {"mode": s.compile_mode, "steps": s.steps, "warmup_steps": s.compile_warmup, "warmup_s": warm,
            "samples_per_s": {"ftsweep compiled": rate},
            "mfu_pct": _mfu(c, cfg, rate, float(encoded.lengths.mean()))}


def section_compiled_hf(c: Check) -> dict:
    """The HF Trainer at its best settings with torch_compile=True, warmed up as long as ftsweep's."""
    s = c.sizes
    encoded, targets, rows = c.data((s.steps + 60) * s.batch)
    cfg = c.cfg()
    started = time.perf_counter()
    warm, timed = time_hf_trainer(cfg, encoded, targets, rows, c.device, c.dtype, s.steps, s.width, best=True,
                                  compile=True, warmup=s.compile_warmup, around=lambda: _noting(c, started))
    return {"torch_compile": True, "steps": s.steps, "warmup_steps": s.compile_warmup, "warmup_s": warm,
            "samples_per_s": {"HF Trainer best compiled": s.batch * s.steps / timed}}


@contextlib.contextmanager
def _noting(c: Check, started: float):
    """Entered when the warm-up is over: a section cut later still tells how long compiling took."""
    c.note(warmup_done_after_s=time.perf_counter() - started)
    yield


def _host_syncs(c: Check, cfg, encoded, targets, rows) -> dict | None:
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

    steps = c.sizes.sync_steps
    time_ftsweep(cfg, encoded, targets, rows, c.device, c.dtype, steps, warmup=3, around=counting)
    return {"steps": steps, "syncs": len(caught), "per_step": len(caught) / steps,
            "kinds": sorted({str(w.message)[:120] for w in caught})[:5]}


def _profile(c: Check, cfg, encoded, targets, rows) -> dict:
    """Where an eager step's time goes: wall vs the time the GPU is busy (device events only, each
    counted once: profiling.device_busy), and the costliest ops on each side."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if c.device.type == "cuda" else [])
    holder = {}

    def around():
        holder["prof"] = profile(activities=activities)
        return holder["prof"]

    steps = c.sizes.profile_steps
    _, wall = time_ftsweep(cfg, encoded, targets, rows, c.device, c.dtype, steps, warmup=5, around=around)
    prof = holder["prof"]
    events = prof.events()
    busy = device_busy(events, wall * 1e6)
    top_cpu = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    on_gpu = c.device.type == "cuda"
    return {"steps": steps, "wall_ms_per_step": 1e3 * wall / steps,
            "gpu_busy_ms_per_step": busy["busy_us"] / 1e3 / steps if on_gpu else None,
            "gpu_busy_pct": busy["busy_pct"] if on_gpu else None, "device_events": busy["device_events"],
            "top_cpu_ops_ms_per_step": {e.key: e.self_cpu_time_total / 1e3 / steps for e in top_cpu},
            "top_gpu_ops_ms_per_step": {k: v / 1e3 / steps for k, v in top_device_ops(events).items()}}


def section_eval_cost(c: Check) -> dict:
    encoded, targets, _ = c.data(c.sizes.fold_rows)
    epoch_s, frequent_s, evaluations, timers = fold_eval_cost(c.base(), c.root, encoded, targets, c.device, c.dtype,
                                                              lambda: PhaseClock.for_device(c.device))
    return {"rows": c.sizes.fold_rows, "epoch_s": epoch_s, "frequent_s": frequent_s, "evaluations": evaluations,
            "overhead_pct": 100 * (frequent_s - epoch_s) / epoch_s,
            "profile": {"epoch": timers["epoch"].summary(epoch_s), "frequent": timers["frequent"].summary(frequent_s)}}


def section_memory(c: Check) -> dict:
    """Peak memory of one fold without and with SWA, each measured from a clean allocator."""
    n_val = max(8, c.sizes.fold_rows // 5)  # a real fold's validation rows, at eval batch 128
    encoded, targets, rows = c.data(c.sizes.memory_steps * c.sizes.batch + n_val)
    out: dict = {"steps": c.sizes.memory_steps}
    for name, extra in (("plain", []), ("swa", ["swa=on", "swa.start_epoch=null", "swa.start_fraction=0.5"])):
        cfg = c.cfg(*extra, f"trainer.max_steps={c.sizes.memory_steps}")
        backbone = load_backbone(cfg.model)
        c.fresh_memory()
        split = FoldSplit(encoded, targets, rows[:-n_val], rows[-n_val:])
        res = train_fold(cfg, backbone, split, Runtime(c.device, c.dtype, 0))
        mem = c.memory()
        out[f"peak_gib_{name}"] = mem["allocated_peak_gib"] if mem else None
        out[f"memory_{name}"] = mem
        out[f"rmse_{name}"] = res.rmse_last
        c.note(**out)
        del backbone, res
    return out


def section_cv(c: Check, compile_mode: str = "false") -> dict:
    """Wall time of the whole run_cv (demo data generated, tokenised, 5 folds, MLflow) and where it
    went: the loop's phases (ftsweep's PhaseTimer), every MLflow call (the Tracker, timed from outside)."""
    over = [*c.sizes.cv, f"trainer.pad_to_multiple_of={c.sizes.pad}", f"model.tokenizer={TOKENIZER}",
            f"trainer.compile={compile_mode}"]
    clock = PhaseClock.for_device(c.device)
    started = time.perf_counter()

    def after_fold(position: int, mean_rmse: float, _predictions) -> bool:
        c.note(folds_done=position + 1, after_s=time.perf_counter() - started, rmse_mean=mean_rmse,
               profile_so_far=clock.summary(time.perf_counter() - started))
        return False  # never stop early

    with timed_methods(Tracker, clock, "mlflow"):
        seconds, result = timed_cv(over, c.root, Job(after_fold=after_fold, phases=clock))
    steps = sum(f.steps for f in result.folds.values())
    return {"overrides": over, "seconds": seconds, "rmse_mean": result.mean(), "steps": steps,
            "ms_per_step": 1e3 * seconds / steps, "profile": clock.summary(seconds)}


def _cli(c: Check, args: list[str]) -> tuple[str, float]:
    """`python -m ftsweep <args>`, run as that command runs (runpy, its argv), in this section's
    own process: the imports are already paid. Returns its stdout and wall seconds."""
    for name in ("MLFLOW_TRACKING_URI", "FTSWEEP_OUTPUTS", "FTSWEEP_DEBUG"):
        os.environ.pop(name, None)
    argv = ["ftsweep", *args, f"model.tokenizer={TOKENIZER}", f"paths.output_root={c.root}"]
    stdout, stderr = io.StringIO(), io.StringIO()
    before = sys.argv, os.getcwd()
    os.chdir(c.root)
    sys.argv = argv
    t = time.perf_counter()
    code = 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            runpy.run_module("ftsweep", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = before[0]
        os.chdir(before[1])
    if code not in (0, None):
        raise RuntimeError(f"python -m ftsweep exited {code}: {stderr.getvalue()[-2000:]}")
    return stdout.getvalue(), time.perf_counter() - t


def _runs(c: Check, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{c.root}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def section_cli(c: Check) -> dict:
    text, seconds = _cli(c, ["-m", "+sweep=table1", *c.sizes.cli])
    runs = _runs(c, "table1")
    status: dict[str, int] = {}
    for r in runs:
        status[r.info.status] = status.get(r.info.status, 0) + 1
    folds = [r for r in runs if FOLD_TAG in r.data.tags]
    parents = [r for r in runs if FOLD_TAG not in r.data.tags and r.data.tags.get(KIND_TAG) != TABLE_KIND]
    printed = "Results of sweep 'table1'" in text and "| Fine-tuning techniques |" in text
    devices = sorted({r.data.tags.get(DEVICE_TAG, "?") for r in parents})
    on_device = all(d.startswith(c.device.type) for d in devices)
    n_folds = 2 * c.sizes.cli_rows  # every cli size has cv.n_folds=2
    if not (status == {"FINISHED": len(runs)} and len(parents) == c.sizes.cli_rows and len(folds) == n_folds
            and printed and on_device):
        raise AssertionError(f"runs by status {status}, {len(parents)} parents, {len(folds)} folds, "
                             f"table printed: {printed}, devices {devices}")
    return {"seconds": seconds, "runs_by_status": status, "parents": len(parents), "folds": len(folds),
            "table_printed": printed, "devices": devices}


def section_folds(c: Check) -> dict:
    """One config's folds: in one job, then as fold jobs (-m cv.folds=[0],[1],...) of n joblib workers packed
    on one GPU (trainer.workers_per_gpu=n), and with several GPUs one worker per GPU. Each run into an
    experiment of its own (one parent each); samples/s over the folds' training span, vs the one job."""
    gpus = torch.cuda.device_count() if c.device.type == "cuda" else 0
    n_folds = int(next(o for o in c.sizes.folds if o.startswith("cv.n_folds=")).partition("=")[2])
    plans = [("one_job", 0, 1)] + [(f"workers_{n}_on_one_gpu", n, n) for n in c.sizes.fold_workers]
    if gpus > 1:
        plans.append((f"workers_{gpus}_one_per_gpu", gpus, 1))
    out: dict = {"gpus": gpus, "n_folds": n_folds}
    for name, workers, per_gpu in plans:
        args = [*c.sizes.folds, f"trainer.pad_to_multiple_of={c.sizes.pad}", f"tracking.experiment=folds_{name}"]
        if workers:
            args = ["-m", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={workers}", f"trainer.workers_per_gpu={per_gpu}",
                    "cv.folds=" + ",".join(f"[{f}]" for f in range(n_folds)), *args]
        _, wall = _cli(c, args)
        out[name] = _one_parent(c, f"folds_{name}", n_folds, wall)
        c.note(**out)
    one = out["one_job"]["samples_per_s"]
    out["speedup_vs_one_job"] = {k: v["samples_per_s"] / one for k, v in out.items() if isinstance(v, dict)}
    return out


def _one_parent(c: Check, experiment: str, n_folds: int, wall: float) -> dict:
    """The experiment's one FINISHED parent with its CV, its folds' training span and samples/s."""
    runs = _runs(c, experiment)
    folds = [r for r in runs if FOLD_TAG in r.data.tags and r.info.status == "FINISHED"]
    parents = [r for r in runs if FOLD_TAG not in r.data.tags and r.data.tags.get(KIND_TAG) != TABLE_KIND]
    if len(parents) != 1 or parents[0].info.status != "FINISHED" or len(folds) != n_folds:
        raise AssertionError(f"{experiment}: parents {[p.info.status for p in parents]}, {len(folds)} finished folds")
    parent = parents[0]
    samples = sum(int(parent.data.params["trainer.batch_size"]) * r.data.metrics["steps"] for r in folds)
    span = (max(r.info.end_time for r in folds) - min(r.info.start_time for r in folds)) / 1e3
    return {"wall_s": wall, "training_span_s": span, "samples_per_s": samples / span,
            "rmse_mean": parent.data.metrics["rmse_mean"], "rmse_oof": parent.data.metrics["rmse_oof"],
            "devices": sorted({r.data.tags.get(DEVICE_TAG, "?") for r in folds})}


def section_large(c: Check) -> dict:
    out = {}
    for preset in c.sizes.large:
        extra = [] if preset != "tiny" else ["trainer.grad_accum_steps=2", "trainer.gradient_checkpointing=true"]
        cfg = compose_cfg([f"model={preset}", "model.source=config", "trainer.epochs=1", "head=pooler",
                           f"trainer.pad_to_multiple_of={c.sizes.pad}", *extra], c.root)
        per_step = int(cfg.trainer.batch_size) * int(cfg.trainer.grad_accum_steps)
        encoded, targets, rows = c.data((c.sizes.large_steps + 10) * per_step)
        c.fresh_memory()
        _, timed = time_ftsweep(cfg, encoded, targets, rows, c.device, c.dtype, c.sizes.large_steps, warmup=3)
        mem = c.memory()
        out[preset] = {"batch": f"{cfg.trainer.batch_size} x {cfg.trainer.grad_accum_steps}",
                       "gradient_checkpointing": bool(cfg.trainer.gradient_checkpointing),
                       "samples_per_s": per_step * c.sizes.large_steps / timed,
                       "peak_gib": mem["allocated_peak_gib"] if mem else None, "memory": mem}
        c.note(**out)
    return out


SECTIONS: dict[str, Callable[[Check], dict]] = {
    "throughput": section_throughput,
    "compiled": section_compiled,
    "compiled_hf": section_compiled_hf,
    "eval_cost": section_eval_cost,
    "memory": section_memory,
    "cv": section_cv,
    "cv_compiled": lambda c: section_cv(c, c.sizes.compile_mode),
    "cli": section_cli,
    "folds": section_folds,
    "large": section_large,
}


def runtime_info(device: torch.device) -> dict:
    """What this process runs on, for the JSON's environment block."""
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "device_type": device.type, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}",
                    device_memory_gib=props.total_memory / GIB, device_count=torch.cuda.device_count(),
                    bf16=torch.cuda.is_bf16_supported())
    else:
        info["device"] = f"CPU ({os.cpu_count()} cores)"
    return info


def run_section(name: str, sizes: Sizes, root: str, smoke: bool, out_dir: str) -> None:
    """A section's process: its numbers to <out_dir>/<name>.json (or an error with its traceback);
    what it has so far to <name>.partial.json."""
    notes = Notes(Path(out_dir) / f"{name}.partial.json")
    final = Path(out_dir) / f"{name}.json"
    started = time.perf_counter()
    if name == PROBE:  # test-only: notes at once, then outlives its limit; the check must cut it and go on
        notes(sleeping_s=sizes.probe_sleep_s)
        time.sleep(sizes.probe_sleep_s)
        write_json(final, {"slept_s": sizes.probe_sleep_s})
        return
    try:
        if smoke:
            torch.set_num_threads(1)  # a shared CI machine
        cfg = compose_cfg([f"trainer.device={'cpu' if smoke else 'cuda'}"], Path(root))
        device, dtype = resolve_device(cfg.trainer)
        check = Check(sizes, device, dtype, Path(root), notes)
        notes(runtime=runtime_info(device))
        check.fresh_memory()
        result = SECTIONS[name](check)
        write_json(final, {**result, "section_s": time.perf_counter() - started, "memory_section": check.memory(),
                           "runtime": notes.data["runtime"]})
    except BaseException as exc:  # noqa: BLE001  (the parent reads the file; the traceback goes to it)
        traceback.print_exc()
        write_json(final, {"error": f"{type(exc).__name__}: {exc}"[:2000],
                           "traceback": traceback.format_exc()[-4000:], "partial": notes.data,
                           "section_s": time.perf_counter() - started})
        raise SystemExit(1) from None
