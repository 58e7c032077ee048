"""The GPU check's plan: what each section runs, how long it may take, what it is measured against.

Imports nothing heavy (no torch): the parent process of gpu_check.py prints and enforces the
plan without touching CUDA, so each section's own process finds the device clean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

LIMIT_S = 480  # one part, start to end, on one H100 / H200
IMPORTS_S = 15  # once per part: the process that every section's process is forked from imports torch & co.
PROBE = "timeout_probe"  # test-only: sleeps past its limit (the smoke run checks that it is cut and the rest runs)


@dataclass(frozen=True)
class Planned:
    """One section: its part, its hard limit in seconds (its process's CUDA set-up included), what it runs."""

    name: str
    part: int
    seconds: float
    what: str


# Run order within each part. Each part's first sections are the ones its targets rest on; the
# compile-heavy ones come last in part 1, where seconds saved by earlier sections pass to them.
PLAN = [
    Planned("throughput", 1, 80, "roberta-base, batch 8, 200 steps, eager: ftsweep, plain loop, HF Trainer "
            "pad-256 and best; 10-step profile, 20-step host-sync count"),
    Planned("compiled", 1, 135, "ftsweep trainer.compile=reduce-overhead: 40 warm-up + 200 steps"),
    Planned("compiled_hf", 1, 135, "HF Trainer best settings + torch_compile=True: 40 warm-up + 200 steps"),
    Planned("eval_cost", 1, 55, "one roberta-base fold, 2,834 rows 4:1, 1 epoch: eval=epoch vs eval=frequent, "
            "profiled"),
    Planned("memory", 1, 40, "one roberta-base fold, 100 steps, plain then SWA: allocated, reserved, device used"),
    Planned("cv", 2, 110, "MiniLM-L6 5 folds x 5 epochs on 2,834 rows (7,100 steps), eager, profiled"),
    Planned("cv_compiled", 2, 140, "the cv section with trainer.compile=reduce-overhead, profiled"),
    Planned("cli", 2, 65, "python -m ftsweep -m +sweep=table1 model=tiny cv.n_folds=2 (7 runs x 2 folds)"),
    Planned("folds", 2, 100, "one config's 5 MiniLM folds x 2 epochs: in one job, then as fold jobs of 2 and 5 "
            "joblib workers on one GPU, and one worker per GPU where there are several"),
    Planned("large", 2, 50, "roberta-large, deberta-v3-large recipes: 20 steps each"),
]
PROBE_PLAN = Planned(PROBE, 0, 2, "sleeps 30 s: must come back as 'timeout', the next section still running")
SMOKE_S = 240  # each smoke section's limit: a loaded 2-core CPU, not a GPU
# Compiling on a CPU takes minutes (inductor's C++), so the smoke run leaves these out.
NOT_IN_SMOKE = {"compiled": "compiling takes minutes on a CPU", "compiled_hf": "compiling takes minutes on a CPU",
                "cv_compiled": "compiling takes minutes on a CPU"}

# (where, key, "<=" or ">=", target): the issue's targets on one H100
TARGETS = [("headline", "ratio_vs_hf", ">=", 3.0), ("headline", "cv_seconds", "<=", 20.0),
           ("eval_cost", "overhead_pct", "<=", 25.0), ("memory", "peak_gib_plain", "<=", 2.5),
           ("memory", "peak_gib_swa", "<=", 3.4)]


def part_plan(part: int | str) -> list[Planned]:
    return [p for p in PLAN if part == "all" or p.part == int(part)]


def part_seconds(part: int | str) -> float:
    """The hard bound on a part's wall time: its sections' limits plus the one import."""
    return IMPORTS_S + sum(p.seconds for p in part_plan(part))


def print_plan() -> None:
    for part in (1, 2):
        print(f"part {part}{' (run first)' if part == 1 else ''}: {part_seconds(part):.0f} s at most "
              f"(limit {LIMIT_S} s)")
        print(f"  {'imports':12s} {IMPORTS_S:4.0f} s  once: torch, transformers, hydra, mlflow, ftsweep")
        for p in part_plan(part):
            print(f"  {p.name:12s} {p.seconds:4.0f} s  {p.what}")


@dataclass
class Sizes:
    """What each section runs; `smoke()` shrinks every part to seconds on a CPU."""

    model: str = "roberta_base"
    batch: int = 8
    steps: int = 200
    width: int = 256
    pad: int = 32
    compile_mode: str = "reduce-overhead"
    compile_warmup: int = 40  # compiled: every shape bucket seen before the clock starts
    profile_steps: int = 10
    sync_steps: int = 20
    fold_rows: int = 2834
    memory_steps: int = 100
    cv: list[str] = field(default_factory=lambda: [
        "model=minilm_l6", "model.source=config", "data.n_rows=2834", "data.words_per_passage=170",
        "data.max_rows=null", "trainer.max_length=256", "cv.n_folds=5", "trainer.epochs=5", "trainer.batch_size=8"])
    # tiny has 2 layers; the grouped-LLRD row needs 3 (optimizer.n_groups=3)
    cli: list[str] = field(default_factory=lambda: ["model=tiny", "cv.n_folds=2", "model.architecture.num_hidden_layers=3"])
    cli_rows: int = 7  # the table1 sweep's rows (conf/sweep/table1.yaml)
    fold_workers: tuple[int, ...] = (2, 5)  # fold jobs at once on one GPU (trainer.workers_per_gpu: all of them)
    folds: list[str] = field(default_factory=lambda: [
        "model=minilm_l6", "model.source=config", "data.n_rows=2834", "data.words_per_passage=170",
        "data.max_rows=null", "trainer.max_length=256", "cv.n_folds=5", "trainer.epochs=2", "trainer.batch_size=8"])
    large: tuple[str, ...] = ("roberta_large", "deberta_v3_large")
    large_steps: int = 20
    probe_sleep_s: float = 30.0

    @classmethod
    def smoke(cls) -> Sizes:
        tiny_data = ["data.n_rows=60", "data.words_per_passage=12", "data.max_rows=null", "trainer.max_length=32"]
        two_rows = "experiment=basic,grouped_llrd_warmup_reinit_swa_frequent"  # replaces the sweep's list
        return cls(model="tiny", steps=6, width=64, pad=8, compile_warmup=2, profile_steps=3, sync_steps=3,
                   fold_rows=96, memory_steps=8,
                   cv=["model=tiny", *tiny_data, "cv.n_folds=2", "trainer.epochs=1"],
                   cli=["model=tiny", "cv.n_folds=2", "model.architecture.num_hidden_layers=3", "data.max_rows=40",
                        "trainer.max_length=32", "scheduler.warmup_steps=2",  # 10 steps a fold: 50 would not fit
                        two_rows],  # the plainest row and the one with every technique
                   cli_rows=2,
                   fold_workers=(1,),  # joblib with one worker runs the fold jobs in its own process
                   folds=["model=tiny", *tiny_data, "cv.n_folds=2", "trainer.epochs=1"],
                   large=("tiny",), large_steps=4)


def headline(sections: dict) -> dict:
    """The numbers the targets are on, from the sections that came back. ftsweep vs the HF Trainer
    like for like: eager vs eager, compiled vs compiled, and best vs best (the headline); a side
    missing a measurement is named in `missing` and the headline is then not like for like."""
    def rate(section: str, key: str) -> float | None:
        value = sections.get(section, {}).get("samples_per_s", {}).get(key)
        return value if isinstance(value, (int, float)) and value > 0 else None

    sides = {"ftsweep": {"eager": rate("throughput", "ftsweep eager"), "compiled": rate("compiled", "ftsweep compiled")},
             "hf": {"eager": max(filter(None, (rate("throughput", "HF Trainer pad"), rate("throughput", "HF Trainer best"))),
                                 default=None),
                    "compiled": rate("compiled_hf", "HF Trainer best compiled")}}
    out: dict = {"samples_per_s": sides}
    for mode in ("eager", "compiled"):
        f, h = sides["ftsweep"][mode], sides["hf"][mode]
        out[f"ratio_{mode}"] = f / h if f and h else None
    best = {side: max(filter(None, rates.values()), default=None) for side, rates in sides.items()}
    out["ratio_vs_hf"] = best["ftsweep"] / best["hf"] if best["ftsweep"] and best["hf"] else None
    out["missing"] = [f"{side} {mode}" for side, rates in sides.items() for mode, v in rates.items() if v is None]
    out["like_for_like"] = not out["missing"]
    cv = [sections.get(s, {}).get("seconds") for s in ("cv", "cv_compiled")]
    out["cv_seconds"] = min((s for s in cv if isinstance(s, (int, float))), default=None)
    return out


def verdict(value, op: str, target: float) -> str:
    if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return "met" if (value <= target if op == "<=" else value >= target) else "MISSED"
