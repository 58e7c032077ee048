"""How often does the paired pruner stop a trial it should not? Simulated trials, the pruner's own
decision code (ftsweep.search.paired: p_worse and PairedPruner.stops), no training.

    python benchmarks/pruner_calibration.py                 # the table of benchmarks/RESULTS.md
    python benchmarks/pruner_calibration.py --seed 1        # another sequence of simulated trials

Each simulated study has `rows` validation rows in 5 folds (rows/5 each); a trial's residual on row
i is s·(√ρ·z_i + √(1-ρ)·u_i): z_i the row's difficulty, shared by every trial, u_i the trial's own
noise (ρ = 0.8), s its true RMSE. Error shapes: `normal` (the squared errors themselves normal,
s²(1 + x/2): the ideal case), `sq-normal` (squared normal residuals) and `sq-t5` (squared t₅
residuals: a few hard rows carry much of the error). The best is the best of N complete trials of
true RMSE 0.5 (N = 1, or 10: chosen by its mean fold RMSE on these very rows, so optimistic).
A new trial is decided after folds 0..3 (4 looks, pooled rows) at true RMSE 0.5 + δ (at the
margin: stopping it at any look is a false prune), 0.55 (clearly worse: power, folds saved) and
0.48 (better: must not be stopped). δ and alpha are PairedPruner's defaults.

Rules compared, on the same p-values: `none` (alpha at every look: the old default), `bonferroni`
(alpha/K), `pocock` (one nominal level whose 4 looks together spend alpha, for Brownian looks at
information 1:2:3:4) and `obf` (O'Brien-Fleming: z-bound C·√(K/j)); tests `t` and `bootstrap`
(percentile, with n_resamples lowered to 500 here and run on the first 800 replicates only: a
decision is then the same up to the p-value's resolution). Prints the table and writes
benchmarks/results/<date>-pruner-calibration.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import optimize, stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ftsweep.search.paired import PairedPruner, p_worse  # noqa: E402

FOLDS, LOOKS, RHO, RMSE = 5, 4, 0.8, 0.5
ROWS, SHAPES, N_BEST = (80, 570, 2834), ("normal", "sq-normal", "sq-t5"), (1, 10)
WORSE, BETTER = 0.55, 0.48
CHUNK, BOOT_REPS, BOOT_RESAMPLES = 200, 800, 500


def rule_levels(alpha: float) -> dict[str, list[float]]:
    """Each rule's nominal one-sided level at looks 1..K (information 1:2:...:K)."""
    corr = np.sqrt(np.minimum.outer(np.arange(1, LOOKS + 1), np.arange(1, LOOKS + 1))
                   / np.maximum.outer(np.arange(1, LOOKS + 1), np.arange(1, LOOKS + 1)))
    looks = stats.multivariate_normal(np.zeros(LOOKS), corr)

    def crossing(bounds: np.ndarray) -> float:  # P(some look's z above its bound), fixed QMC seed
        return 1.0 - looks.cdf(bounds, rng=np.random.default_rng(0))

    pocock = optimize.brentq(lambda c: crossing(np.full(LOOKS, c)) - alpha, 1.0, 5.0, xtol=1e-6)
    shape = np.sqrt(LOOKS / np.arange(1, LOOKS + 1))
    obf = optimize.brentq(lambda c: crossing(c * shape) - alpha, 1.0, 5.0, xtol=1e-6)
    return {"none": [alpha] * LOOKS, "bonferroni": [alpha / LOOKS] * LOOKS,
            "pocock": [float(stats.norm.sf(pocock))] * LOOKS, "obf": [float(stats.norm.sf(obf * s)) for s in shape]}


def unit(rng: np.random.Generator, shape: str, size) -> np.ndarray:
    """Unit-variance draws: normal, or t with 5 degrees of freedom."""
    return rng.standard_t(5, size) / math.sqrt(5 / 3) if shape == "sq-t5" else rng.standard_normal(size)


def errors(rmse: float, z: np.ndarray, u: np.ndarray, shape: str) -> np.ndarray:
    """Squared errors of mean rmse² on each row (residuals shared at ρ through z)."""
    x = math.sqrt(RHO) * z + math.sqrt(1 - RHO) * u
    return rmse**2 * (1 + x / 2) if shape == "normal" else (rmse * x) ** 2


def draw_chunk(rng: np.random.Generator, rows: int, shape: str, reps: int) -> dict:
    """One chunk of simulated studies: the best of 1 and of N_BEST[-1] reference trials, and the
    three candidates, each (reps, rows)."""
    z = unit(rng, shape, (reps, 1, rows))
    refs = errors(RMSE, z, unit(rng, shape, (reps, N_BEST[-1], rows)), shape)
    ends = np.cumsum([len(f) for f in np.array_split(np.arange(rows), FOLDS)])
    fold_rmse = np.sqrt(np.stack([refs[..., a:b].mean(-1) for a, b in zip([0, *ends[:-1]], ends, strict=True)], -1))
    chosen = fold_rmse.mean(-1).argmin(1)  # the study's value: the mean fold RMSE
    best = {1: refs[:, 0], N_BEST[-1]: refs[np.arange(reps), chosen]}
    truth = {"margin": RMSE + PairedPruner().min_delta, "worse": WORSE, "better": BETTER}
    candidates = {name: errors(s, z[:, 0], unit(rng, shape, (reps, rows)), shape) for name, s in truth.items()}
    return {"best": best, "candidates": candidates, "ends": ends}


def decide_chunk(chunk: dict, levels: dict[str, list[float]], bootstrap: bool) -> dict:
    """(candidate, N, test, rule) -> the look each trial is first stopped at (-1: never)."""
    default, out = PairedPruner(), {}
    for name, trial in chunk["candidates"].items():
        for n_best, best in chunk["best"].items():
            if n_best != 1 and name != "margin":
                continue
            p = {"t": [], "bootstrap": []}
            stops = []
            for look in range(LOOKS):
                rows = slice(0, chunk["ends"][look])
                p["t"].append(p_worse(trial[:, rows], best[:, rows], default.min_delta, "t"))
                stops.append(default.stops(trial[:, rows], best[:, rows], look, FOLDS))
                if bootstrap:
                    p["bootstrap"].append(p_worse(trial[:, rows], best[:, rows], default.min_delta, "bootstrap",
                                                  n_resamples=BOOT_RESAMPLES))
            out[name, n_best, "default", "default"] = first_look(stops)
            for test, values in p.items():
                for rule, level in (levels.items() if values else ()):
                    out[name, n_best, test, rule] = first_look([v < lvl for v, lvl in zip(values, level, strict=True)])
    return out


def first_look(stopped: list[np.ndarray]) -> np.ndarray:
    stacked = np.stack(stopped)
    return np.where(stacked.any(0), stacked.argmax(0), -1)


def simulate(rows: int, shape: str, reps: int, seed: int, boot_reps: int = BOOT_REPS) -> dict:
    """Every rule's first stopping look for `reps` simulated studies (the bootstrap on the first boot_reps)."""
    rng = np.random.default_rng([seed, rows, SHAPES.index(shape)])
    levels, merged = rule_levels(PairedPruner().alpha), {}
    for start in range(0, reps, CHUNK):
        part = decide_chunk(draw_chunk(rng, rows, shape, min(CHUNK, reps - start)), levels, start < boot_reps)
        for key, looks in part.items():
            merged.setdefault(key, []).append(looks)
    return {key: np.concatenate(parts) for key, parts in merged.items()}


def rate(looks: np.ndarray) -> dict:
    """Share stopped at any look, its Monte-Carlo 95% interval (Wilson), and mean folds saved."""
    n, k = len(looks), int(np.count_nonzero(looks >= 0))
    p, z = k / n, 1.959964
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (
        1 + z * z / n)
    saved = float(np.where(looks >= 0, FOLDS - 1 - looks, 0).mean())
    return {"rate": p, "low": max(0.0, centre - half), "high": min(1.0, centre + half), "n": n, "folds_saved": saved}


COLUMNS = [("old: bootstrap, α each look", "bootstrap", "none"), ("bootstrap, Bonferroni", "bootstrap", "bonferroni"),
           ("t, α each look", "t", "none"), ("**t, Bonferroni (default)**", "default", "default"),
           ("t, Pocock", "t", "pocock"), ("t, O'Brien-Fleming", "t", "obf")]


def table(results: dict) -> str:
    """False prunes at the margin per rule, then the defaults' power and better trials stopped."""
    pct = lambda r: f"{100 * r['rate']:.1f} [{100 * r['low']:.1f}, {100 * r['high']:.1f}]"  # noqa: E731
    head = ["rows", "errors", "best of"] + [c[0] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    power = ["| rows | errors | old: stopped / folds saved | default: stopped / folds saved | t, Pocock: stopped / "
             "folds saved | better stopped (old, default) |", "|---|---|---|---|---|---|"]
    for (rows, shape), res in results.items():
        for n_best in N_BEST:
            cells = [pct(res[f"margin/{n_best}/{test}/{rule}"]) for _, test, rule in COLUMNS]
            lines.append(f"| {rows} | {shape} | {n_best} | " + " | ".join(cells) + " |")
        stopped = [res[f"worse/1/{key}"] for key in ("bootstrap/none", "default/default", "t/pocock")]
        better = (res["better/1/bootstrap/none"]["rate"], res["better/1/default/default"]["rate"])
        power.append(f"| {rows} | {shape} | " + " | ".join(f"{100 * r['rate']:.0f}% / {r['folds_saved']:.2f}"
                                                          for r in stopped)
                     + f" | {100 * better[0]:.1f}%, {100 * better[1]:.1f}% |")
    return "\n".join(lines) + "\n\n" + "\n".join(power)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reps", type=int, default=2000, help="simulated studies per setting (MC SE ~0.5%% at 5%%)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    started, results = time.perf_counter(), {}
    for rows in ROWS:
        for shape in SHAPES:
            looks = simulate(rows, shape, args.reps, args.seed)
            results[rows, shape] = {"/".join(map(str, key)): rate(value) for key, value in looks.items()}
    elapsed = time.perf_counter() - started
    default = PairedPruner()
    print(f"Paired pruner calibration: seed {args.seed}, {args.reps} studies a setting (bootstrap: {BOOT_REPS}, "
          f"{BOOT_RESAMPLES} resamples), alpha {default.alpha}, min_delta {default.min_delta}, {LOOKS} looks, "
          f"{elapsed:.0f} s\n\nFalse prunes (% of trials at the margin stopped at any look, Monte-Carlo 95% "
          f"interval):\n\n{table(results)}")
    out = {"date": dt.date.today().isoformat(), "seed": args.seed, "reps": args.reps, "boot_reps": BOOT_REPS,
           "boot_resamples": BOOT_RESAMPLES, "alpha": default.alpha, "min_delta": default.min_delta, "rho": RHO,
           "levels": rule_levels(default.alpha), "seconds": elapsed,
           "results": {f"{rows}/{shape}": res for (rows, shape), res in results.items()}}
    path = args.json or ROOT / "benchmarks" / "results" / f"{out['date']}-pruner-calibration.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwritten: {path}")
    return out


if __name__ == "__main__":
    main()
