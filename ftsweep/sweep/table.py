"""`python -m ftsweep.table --experiment NAME`: the results table of a sweep, from MLflow.

One row per config (seeds pooled): mean +- sd RMSE over folds for the best
checkpoint and the last (or SWA) weights, the seed-to-seed spread of the CV
mean, and the change against a baseline row as a fold-paired comparison (mean
of per-(seed, fold) differences with its 95% t-interval) — so a difference
smaller than the noise looks like one. Writes Markdown, CSV and a bar chart,
logs them to MLflow, and prints the Markdown.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ftsweep.config.resolvers import default_outputs
from ftsweep.errors import FtsweepError
from ftsweep.tags import (
    CONFIG_KEY_TAG,
    DATA_FINGERPRINT_TAG,
    FOLD_TAG,
    JOB_NUM_TAG,
    KIND_TAG,
    LABEL_TAG,
    PRUNED_TAG,
    ROW_KEY_TAG,
    SEED_TAG,
    STUDY_TAG,
    TABLE_KIND,
    TRIAL_TAG,
)
from ftsweep.tracking.store import Tracker
from ftsweep.train import plots

BASELINE_LABEL = "Basic fine-tuning"


def default_tracking_uri() -> str:
    """What conf/tracking/default.yaml resolves to: $MLFLOW_TRACKING_URI, else the SQLite store under outputs/."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{default_outputs()}/mlflow.db"


def fold_frame(tracker: Tracker) -> pd.DataFrame:
    """Every FINISHED fold run of the experiment: one row per (config row, seed, fold), newest kept."""
    runs = tracker.all_runs()
    parents = {r.info.run_id: r for r in runs if FOLD_TAG not in r.data.tags}  # any status: labels, reference
    records = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        if run.info.status != "FINISHED" or FOLD_TAG not in tags or "rmse_best" not in metrics:
            continue
        parent = parents.get(tags.get("mlflow.parentRunId", ""))
        pruned = parent is not None and PRUNED_TAG in parent.data.tags
        if parent is None or (parent.info.status != "FINISHED" and not pruned):  # running, killed or failed
            continue
        reference = parent.data.params.get("reference_rmse", "None")
        records.append({
            "row_key": tags.get(ROW_KEY_TAG, tags.get(CONFIG_KEY_TAG)),
            "label": tags.get(LABEL_TAG, ""), "seed": int(tags.get(SEED_TAG, 0)),
            "fold": int(tags[FOLD_TAG]), "rmse_best": metrics["rmse_best"], "rmse_last": metrics["rmse_last"],
            "swa": "rmse_swa" in metrics, "start_time": run.info.start_time,
            "job_num": int(tags.get(JOB_NUM_TAG, 0)), "data": tags.get(DATA_FINGERPRINT_TAG, ""),
            "reference": float(reference) if reference not in ("None", "", "null") else math.nan,
            "pruned": pruned, "study": tags.get(STUDY_TAG, ""), "trial": int(tags.get(TRIAL_TAG, -1)),
        })
    frame = pd.DataFrame(records)
    if frame.empty:
        raise FtsweepError(f"experiment {tracker.experiment_name!r} has no finished fold runs yet.")
    return frame.drop_duplicates(["row_key", "seed", "fold"], keep="first")  # newest first


@dataclass
class Paired:
    mean: float
    low: float
    high: float
    n: int


def paired_difference(row: pd.DataFrame, base: pd.DataFrame, column: str = "rmse_best") -> Paired:
    """Mean of per-(seed, fold) differences row - baseline, with a 95% t-interval."""
    joined = row.merge(base, on=["seed", "fold"], suffixes=("", "_base"))
    diffs = (joined[column] - joined[f"{column}_base"]).to_numpy()
    if len(diffs) == 0:
        return Paired(math.nan, math.nan, math.nan, 0)
    mean = float(diffs.mean())
    if len(diffs) < 2:
        return Paired(mean, math.nan, math.nan, 1)
    half = float(stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs)))
    return Paired(mean, mean - half, mean + half, len(diffs))


def _stats(group: pd.DataFrame, column: str) -> tuple[float, float, float]:
    """(mean over seeds of the CV mean, mean fold sd, sd of the CV mean across seeds)."""
    per_seed = group.groupby("seed")[column]
    means = per_seed.mean()
    fold_sd = per_seed.std(ddof=0).where(per_seed.size() > 1).mean()  # one fold: no spread to report
    seed_sd = float(means.std(ddof=1)) if len(means) > 1 else math.nan
    return float(means.mean()), float(fold_sd), seed_sd


def build_table(folds: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """The ranked rows: configs that ran every fold (a pruned search trial is listed apart)."""
    folds = folds if "data" in folds else folds.assign(data="")
    if "pruned" in folds:
        folds = folds[~folds["pruned"]]
    if folds.empty:
        raise FtsweepError("no config has finished all its folds yet (pruned trials are listed apart).")
    if folds["data"].nunique() > 1:  # same labels on other data: say which rows saw what
        folds = folds.assign(label=folds["label"] + " [data " + folds["data"].str[:8] + "]")
    rows = []
    for key, group in folds.groupby("row_key", sort=False):
        best = _stats(group, "rmse_best")
        last = _stats(group, "rmse_last")
        rows.append({"row_key": key, "label": group["label"].iloc[0], "seeds": group["seed"].nunique(),
                     "folds": len(group), "rmse_best": best[0], "rmse_best_sd": best[1], "seed_sd": best[2],
                     "rmse_last": last[0], "rmse_last_sd": last[1], "swa": bool(group["swa"].any()),
                     "reference": group["reference"].iloc[0], "start_time": group["start_time"].min(),
                     "job_num": group["job_num"].min()})
    table = pd.DataFrame(rows)
    table["order"] = table["reference"].fillna(np.inf)
    table = table.sort_values(["order", "job_num", "start_time"], ascending=[False, True, True]).drop(columns="order")
    table["data"] = [folds.loc[folds["row_key"] == key, "data"].iloc[0] for key in table["row_key"]]
    if baseline and not (_plain_labels(table) == baseline).any():
        raise FtsweepError(f"--baseline {baseline!r} is not a row label; labels: {list(table['label'])}")
    # Δ pairs (seed, fold) of one data set only: each data set has its own baseline row
    base_keys = {data: _baseline_key(table[table["data"] == data], baseline) for data in table["data"].unique()}
    for i, key, data in zip(table.index, table["row_key"], table["data"], strict=True):
        diff = paired_difference(folds[folds["row_key"] == key], folds[folds["row_key"] == base_keys[data]])
        table.loc[i, ["delta", "delta_low", "delta_high", "pairs"]] = [diff.mean, diff.low, diff.high, diff.n]
    table["baseline"] = table["row_key"].isin(base_keys.values())
    return table.reset_index(drop=True)


def _baseline_key(table: pd.DataFrame, baseline: str | None) -> str:
    match = table[_plain_labels(table) == (baseline or BASELINE_LABEL)]
    if len(match):
        return match["row_key"].iloc[0]
    return table["row_key"].iloc[0]  # the first row in sweep order


def _plain_labels(table: pd.DataFrame) -> pd.Series:
    return table["label"].str.replace(r" \[data \w+\]$", "", regex=True)


def _fmt(x: float, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def to_markdown(table: pd.DataFrame) -> str:
    has_ref = table["reference"].notna().any()
    head = ["Fine-tuning techniques", "runs", "RMSE best (mean ± sd)", "RMSE last/SWA (mean ± sd)", "seed sd",
            "Δ best vs baseline [95% CI]"] + (["reference"] if has_ref else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.itertuples():
        if r.baseline:
            delta = "baseline"
        elif r.pairs >= 2:
            noise = "" if (r.delta_low > 0 or r.delta_high < 0) else " (within noise)"
            delta = f"{r.delta:+.4f} [{r.delta_low:+.4f}, {r.delta_high:+.4f}]{noise}"
        elif r.pairs == 1:
            delta = f"{r.delta:+.4f} (one paired fold: no interval)"
        else:
            delta = "no paired folds"
        runs = f"{r.seeds}×{r.folds // max(r.seeds, 1)}" if r.seeds > 1 else f"{r.folds}"
        cells = [r.label, runs, f"{_fmt(r.rmse_best)} ± {_fmt(r.rmse_best_sd)}",
                 f"{_fmt(r.rmse_last)} ± {_fmt(r.rmse_last_sd)}" + (" (SWA)" if r.swa else ""), _fmt(r.seed_sd), delta]
        if has_ref:
            cells.append(_fmt(r.reference))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pruned_markdown(folds: pd.DataFrame) -> str:
    """Search trials a pruner stopped: how far each got. Not ranked: a mean of the first folds is
    not comparable with a full CV mean."""
    stopped = folds[folds["pruned"]] if "pruned" in folds else folds.iloc[:0]
    if stopped.empty:
        return ""
    lines = ["Pruned trials (stopped early, not ranked):", "",
             "| Trial | folds run | running mean RMSE | stopped after fold |", "|---|---|---|---|"]
    for _, group in stopped.groupby("row_key", sort=False):
        group = group.sort_values("fold")
        lines.append(f"| {group['label'].iloc[0]} | {len(group)} | {_fmt(group['rmse_best'].mean())} | "
                     f"{int(group['fold'].iloc[-1])} |")
    return "\n".join(lines)


def write_table(tracker: Tracker, out_dir: Path, baseline: str | None = None, log_to_mlflow: bool = True) -> tuple[str, dict]:
    folds = fold_frame(tracker)
    table = build_table(folds, baseline)
    markdown = "\n\n".join(part for part in (to_markdown(table), pruned_markdown(folds)) if part)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "results.md", "csv": out_dir / "results.csv", "png": out_dir / "results.png"}
    paths["md"].write_text(f"# {tracker.experiment_name}\n\n{markdown}\n")
    table.drop(columns=["start_time", "job_num", "data"]).to_csv(paths["csv"], index=False)
    plots.results_bars(table, paths["png"], title=f"{tracker.experiment_name}: mean CV RMSE")
    if log_to_mlflow:
        run_id = tracker.start_run("results table", {KIND_TAG: TABLE_KIND})
        for path in paths.values():
            tracker.log_artifact(run_id, path)
        tracker.finish(run_id, "FINISHED")
    return markdown, paths


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]

