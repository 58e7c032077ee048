"""The GPU check: ftsweep on CUDA end to end, its speed against the HF Trainer, memory, whole CV runs.

    python benchmarks/gpu_check.py --plan       # the sections, their sizes and seconds (no GPU needed)
    python benchmarks/gpu_check.py              # part 1 (run it first), <= 8 min on one H100 / H200
    python benchmarks/gpu_check.py --part 2     # part 2, <= 8 min
    python benchmarks/gpu_check.py --smoke      # every section that needs no compiling, tiny, on the CPU (in the tests)

Each section runs in a process of its own, forked from one that imported torch & co. once, with
a hard limit from the plan (benchmarks/gpu_plan.py): a section past its limit is killed with
everything it started and recorded as "timeout" (with what it had measured so far), and the next
one runs. The parent never touches CUDA, so each section's memory peaks are its own. The JSON
(benchmarks/results/<date>-<gpu>-part<N>.json) is written after every section: an environment
block, the headline (ftsweep vs the HF Trainer like for like, the CV time), the targets, then
each section. Offline: random-init models from their configs; MiniLM's tokenizer and
CommonLit's token lengths ship in benchmarks/data/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.metadata as md
import json
import multiprocessing
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# This checkout's ftsweep, and on an offline box the wheels installed by `pip install --target .whl/site`.
PATHS = [str(p) for p in (HERE, HERE.parent, HERE.parent / ".whl" / "site") if p.is_dir()]
sys.path[:0] = [p for p in PATHS if p not in sys.path]

from gpu_plan import (  # noqa: E402
    IMPORTS_S,
    LIMIT_S,
    NOT_IN_SMOKE,
    PLAN,
    PROBE,
    PROBE_PLAN,
    SMOKE_S,
    TARGETS,
    Planned,
    Sizes,
    headline,
    part_plan,
    print_plan,
    verdict,
)

RESULTS = HERE / "results"
# The packages the offline wheels are installed beside: a version clash among these is the likely
# failure on a box with its own stack, so the JSON names each version and where it was loaded from.
PACKAGES = ["torch", "transformers", "tokenizers", "accelerate", "numpy", "pandas", "typing-extensions", "anyio",
            "protobuf", "pydantic", "hydra-core", "omegaconf", "mlflow-skinny", "mlflow", "sqlalchemy"]
CHILD_NOTES = ("runtime",)  # what each section's process reports that belongs to the environment block


def environment() -> dict:
    """Python, torch, CUDA, cuDNN, the packages: all without creating a CUDA context here."""
    import torch  # the version and its CUDA / cuDNN builds; torch.cuda.is_available() makes no context

    env = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
           "cuda_available": torch.cuda.is_available(), "packages": {}}
    wheels = str(HERE.parent / ".whl" / "site")
    for name in PACKAGES:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        where = str(getattr(dist, "_path", ""))
        env["packages"][name] = {"version": dist.version, "from": "offline wheels" if where.startswith(wheels) else "system"}
    try:  # the driver and what else is on the card, as the box reports it (no CUDA context in this process)
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.used",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        env["nvidia_smi"] = smi.stdout.strip().splitlines() if smi.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        env["nvidia_smi"] = None
    return env


def _child(name: str, sizes: Sizes, root: str, smoke: bool, out_dir: str) -> None:
    """A section's process. Its own process group first: a timeout kills it and all it started."""
    os.setsid()
    gc.freeze()  # the imports inherited from the fork server: no collection walks them again (seconds each)
    try:
        from gpu_sections import run_section  # already imported by the fork server: costs nothing
    except BaseException as exc:  # noqa: BLE001
        Path(out_dir, f"{name}.json").write_text(json.dumps({"error": f"importing the sections: {exc!r}"}))
        raise SystemExit(1) from None
    run_section(name, sizes, root, smoke, out_dir)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _kill_group(pid: int) -> None:
    """The section's process group: the section and whatever it started (CLI workers, compile workers)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_one(ctx, planned: Planned, limit: float, args: tuple) -> dict:
    """One section in its own process, at most `limit` seconds; what it returned, or why not."""
    sizes, root, smoke, out_dir = args
    proc = ctx.Process(target=_child, args=(planned.name, sizes, str(root), smoke, str(out_dir)), name=planned.name)
    started = time.perf_counter()
    try:
        proc.start()
    except Exception as exc:  # the fork server died (e.g. an import failing with more than an ImportError)
        return {"error": f"could not start the section's process: {exc!r}", "section_s": 0.0}
    proc.join(limit)
    timed_out = proc.is_alive()
    _kill_group(proc.pid)  # also when it ended: nothing it started may outlive it (a worker holding the GPU)
    if timed_out:
        proc.kill()
    proc.join(30)
    partial = _read(out_dir / f"{planned.name}.partial.json") or {}
    if timed_out:
        return {"timeout": round(limit, 1), "partial": partial, "section_s": time.perf_counter() - started}
    result = _read(out_dir / f"{planned.name}.json")
    if result is None:  # killed from outside (out of memory) or crashed in C: no file, only an exit code
        code = proc.exitcode
        why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return {"error": f"the section's process died ({why}) without a result", "partial": partial,
                "section_s": time.perf_counter() - started}
    return result


def _sections_to_run(args) -> tuple[list[Planned], dict[str, str]]:
    if args.smoke:
        # the probe right after the first section: it must be cut at its own limit, the rest run on
        order = [PLAN[0], PROBE_PLAN, *PLAN[1:]] if not args.no_probe else list(PLAN)
        order = [p if p.name == PROBE else Planned(p.name, p.part, SMOKE_S, "smoke: tiny, on the CPU") for p in order]
    else:
        order = part_plan(args.part)
    only = [s for s in args.only.split(",") if s]
    known = {p.name for p in PLAN} | {PROBE}
    bad = [s for s in [*only, *(s for s in args.skip.split(",") if s)] if s not in known]
    if bad:
        raise ValueError(f"unknown section(s) {', '.join(bad)}; the sections: {', '.join(sorted(known))}")
    if only:
        order = [p for p in order if p.name in only] or [p for p in [*PLAN, PROBE_PLAN] if p.name in only]
    skipped = {p.name: "--skip" for p in order if p.name in args.skip.split(",")}
    if args.smoke:
        skipped.update({p.name: f"not in the smoke run: {NOT_IN_SMOKE[p.name]}" for p in order if p.name in NOT_IN_SMOKE})
    return order, skipped


def _write(report: dict, out: Path, started: float) -> None:
    """After every section: a run cut short keeps what it measured."""
    report["headline"] = headline(report["sections"])
    report["total_s"] = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plan", action="store_true", help="print the sections, their sizes and seconds, and exit")
    p.add_argument("--part", default="1", choices=["1", "2", "all"], help="which part (default 1: run it first)")
    p.add_argument("--smoke", action="store_true", help="every section that needs no compiling, tiny, on the CPU")
    p.add_argument("--only", default="", help="comma-separated sections to run (of the part; else of all)")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out")
    p.add_argument("--no-probe", action="store_true", help="smoke: leave out the section that must time out")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/<date>-<gpu>-part<N>.json)")
    args = p.parse_args(argv)
    if args.plan:
        print_plan()
        return 0
    try:
        order, skipped = _sections_to_run(args)
    except ValueError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2
    env = environment()
    if not args.smoke and not env["cuda_available"]:
        print("gpu_check: error: no CUDA device visible; --smoke runs the CPU check, --plan shows the plan", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="ftsweep-gpu-check-"))
    out_dir = root / "sections"
    out_dir.mkdir()
    gpu = (env["nvidia_smi"] or ["cuda"])[0].split(",")[0] if not args.smoke else "cpu-smoke"
    out = args.out or (root if args.smoke else RESULTS) / (
        f"{dt.date.today()}-{re.sub(r'[^a-z0-9]+', '-', gpu.lower()).strip('-')}-part{args.part}.json")
    limit = sum(p.seconds for p in order if p.name not in skipped) + (0 if args.smoke else IMPORTS_S)
    report = {"environment": env, "date": dt.datetime.now().isoformat(timespec="seconds"), "smoke": args.smoke,
              "part": args.part, "limit_s": limit, "plan_s": {p.name: p.seconds for p in order}, "headline": {},
              "targets": {f"{w}.{k}": f"{op} {t}" for w, k, op, t in TARGETS}, "sections": {}}
    print(f"gpu_check: part {args.part}{' (smoke)' if args.smoke else ''}, {len(order)} sections, at most {limit:.0f} s "
          f"(limit {LIMIT_S} s); torch {env['torch']}; working in {root}", flush=True)

    # PYTHONPATH too: processes the sections start (the CLI's joblib workers) import this checkout.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [*PATHS, os.environ.get("PYTHONPATH")]))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["gpu_sections"])  # torch, transformers, hydra, mlflow, ftsweep: imported once
    started = time.perf_counter()
    deadline = started + (0 if args.smoke else IMPORTS_S)  # the one import, paid inside the first section
    for planned in order:
        if planned.name in skipped:
            report["sections"][planned.name] = {"skipped": skipped[planned.name]}
            continue
        deadline += planned.seconds
        # Seconds an earlier section saved pass on to this one; the probe gets exactly its own.
        limit_s = planned.seconds if planned.name == PROBE else max(deadline - time.perf_counter(), 1.0)
        print(f"[{time.perf_counter() - started:6.1f} s] {planned.name}: up to {limit_s:.0f} s "
              f"(planned {planned.seconds:.0f} s) - {planned.what}", flush=True)
        result = run_one(ctx, planned, limit_s, (Sizes.smoke() if args.smoke else Sizes(), root, args.smoke, out_dir))
        for key in CHILD_NOTES:  # the device it ran on goes to the environment block
            info = result.pop(key, None) or result.get("partial", {}).pop(key, None)
            if info and key not in env:
                env[key] = info
        report["sections"][planned.name] = result
        state = ("TIMEOUT" if "timeout" in result else "ERROR: " + result["error"][:200] if "error" in result
                 else "done")
        print(f"[{time.perf_counter() - started:6.1f} s] {planned.name}: {state} "
              f"({result.get('section_s', 0):.1f} s)", flush=True)
        _write(report, out, started)
    _write(report, out, started)
    print()
    print_table(report)
    print(f"\nwritten: {out}")
    failed = [n for n, s in report["sections"].items() if "error" in s or ("timeout" in s and n != PROBE)]
    return 1 if failed else 0


def print_table(report: dict) -> None:
    rows = [("where", "measure", "value", "target", "")]
    head = report["headline"]
    for where, key, op, target in TARGETS:
        value = head.get(key) if where == "headline" else report["sections"].get(where, {}).get(key)
        status = verdict(value, op, target)
        if report["smoke"]:
            status = "n/a (smoke)"
        elif where == "headline" and key == "ratio_vs_hf" and not head.get("like_for_like"):
            status += f" (not like for like: no {', '.join(head['missing'])})"
        rows.append((where, key, _fmt(value), f"{op} {target:g}", status))
    for mode in ("eager", "compiled"):
        rows.append(("headline", f"ratio_{mode}", _fmt(head.get(f"ratio_{mode}")), "", "ftsweep / HF Trainer"))
    for name, sec in report["sections"].items():
        kind = next((k for k in ("skipped", "timeout", "error") if k in sec), None)
        if kind:  # and what it measured before it stopped
            rows.append((name, kind.upper(), str(sec[kind])[:90], "", ""))
            sec = {"partial": sec.get("partial") or {}}
        rows += [(name, key, _fmt(value), "", "") for key, value in _flat(sec)]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _flat(sec: dict, prefix: str = ""):
    for k, v in sec.items():
        if k in ("overrides", "top_cpu_ops_ms_per_step", "top_gpu_ops_ms_per_step", "kinds", "profile",
                 "profile_so_far", "memory_section", "runtime", "traceback"):
            continue
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return "-" if v is None else str(v)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
