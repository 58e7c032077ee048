"""`python -m ftsweep.table --experiment NAME`: the results table of a sweep, from MLflow.

One row per config (seeds pooled): mean +- sd RMSE over folds for the best
checkpoint and the last (or SWA) weights, the seed-to-seed spread of the CV
mean (sample sds, ddof=1), and the change against a baseline row fold by fold:
seeds averaged within a fold, the corrected resampled t-interval over the k
folds and P(better / equivalent / worse) within a ROPE from the Bayesian
correlated t-test (ftsweep.sweep.compare says what each assumes). An interval
that holds 0 reads "not detected": too little evidence, not "no effect". A Δ
is computed only between folds that hold the same rows (ftsweep.fold_rows).
Writes Markdown, CSV and a bar chart, logs them to MLflow, and prints the
Markdown.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ftsweep.config.resolvers import default_outputs
from ftsweep.errors import FtsweepError
from ftsweep.sweep.compare import DEFAULT_ROPE, UNRECORDED, check_rope, paired_difference
from ftsweep.tags import (
    CONFIG_KEY_TAG,
    DATA_FINGERPRINT_TAG,
    FOLD_ROWS_TAG,
    FOLD_SIZES_TAG,
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
# build_table's comparison columns <- compare.Paired's fields (pairs: paired folds)
COMPARISON_COLUMNS = {"delta": "mean", "delta_low": "low", "delta_high": "high", "pairs": "n", "p_better": "p_better",
                      "p_equivalent": "p_equivalent", "p_worse": "p_worse", "nb_ratio": "ratio",
                      "ratio_recorded": "ratio_recorded", "delta_note": "note"}


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
        records.append(_fold_record(run, parent, pruned))
    frame = pd.DataFrame(records)
    if frame.empty:
        raise FtsweepError(f"experiment {tracker.experiment_name!r} has no finished fold runs yet.")
    return frame.drop_duplicates(["row_key", "seed", "fold"], keep="first")  # newest first


def _fold_record(run, parent, pruned: bool) -> dict:
    tags, metrics, params = run.data.tags, run.data.metrics, parent.data.params
    reference = params.get("reference_rmse", "None")
    # runs from before the fold tags: folds named by the cv settings that made them (see compare.UNRECORDED)
    cv = UNRECORDED + "/".join(params.get(f"cv.{key}", "?") for key in ("n_folds", "fold_seed", "n_bins"))
    n_val, _, n_train = tags.get(FOLD_SIZES_TAG, "/").partition("/")
    return {
        "row_key": tags.get(ROW_KEY_TAG, tags.get(CONFIG_KEY_TAG)),
        "label": tags.get(LABEL_TAG, ""), "seed": int(tags.get(SEED_TAG, 0)),
        "fold": int(tags[FOLD_TAG]), "rmse_best": metrics["rmse_best"], "rmse_last": metrics["rmse_last"],
        "swa": "rmse_swa" in metrics, "start_time": run.info.start_time,
        "job_num": int(tags.get(JOB_NUM_TAG, 0)), "data": tags.get(DATA_FINGERPRINT_TAG, ""),
        "reference": float(reference) if reference not in ("None", "", "null") else math.nan,
        "pruned": pruned, "study": tags.get(STUDY_TAG, ""), "trial": int(tags.get(TRIAL_TAG, -1)),
        "rows": tags.get(FOLD_ROWS_TAG, cv), "n_val": float(n_val or "nan"), "n_train": float(n_train or "nan"),
        "n_folds": float(params.get("cv.n_folds", "nan")),
    }


def _stats(group: pd.DataFrame, column: str) -> tuple[float, float, float]:
    """(mean over seeds of the CV mean, mean fold sd, sd of the CV mean across seeds): sample sds."""
    per_seed = group.groupby("seed")[column]
    means = per_seed.mean()
    fold_sd = per_seed.std(ddof=1).mean()  # one fold: NaN, no spread to report
    seed_sd = float(means.std(ddof=1)) if len(means) > 1 else math.nan
    return float(means.mean()), float(fold_sd), seed_sd


def build_table(folds: pd.DataFrame, baseline: str | None = None, rope: float = DEFAULT_ROPE) -> pd.DataFrame:
    """The ranked rows: configs that ran every fold (a pruned search trial is listed apart); each
    compared with its data set's baseline (ftsweep.sweep.compare), `rope` in RMSE units."""
    rope = check_rope(rope)
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
    # Δ pairs folds of one data set only: each data set has its own baseline row
    base_keys = {data: _baseline_key(table[table["data"] == data], baseline) for data in table["data"].unique()}
    compared = [paired_difference(folds[folds["row_key"] == key], folds[folds["row_key"] == base_keys[data]],
                                  rope=rope) for key, data in zip(table["row_key"], table["data"], strict=True)]
    for column, field in COMPARISON_COLUMNS.items():
        table[column] = [getattr(c, field) for c in compared]
    table["rope"] = rope
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
    rope = float(table["rope"].iloc[0])
    head = ["Fine-tuning techniques", "runs", "RMSE best (mean ± sd)", "RMSE last/SWA (mean ± sd)", "seed sd",
            "Δ best vs baseline [95% CI]", f"P(better / ≈ / worse), ROPE ±{rope:g}"] + (["reference"] if has_ref else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.itertuples():
        runs = f"{r.seeds}×{r.folds // max(r.seeds, 1)}" if r.seeds > 1 else f"{r.folds}"
        cells = [r.label, runs, f"{_fmt(r.rmse_best)} ± {_fmt(r.rmse_best_sd)}",
                 f"{_fmt(r.rmse_last)} ± {_fmt(r.rmse_last_sd)}" + (" (SWA)" if r.swa else ""), _fmt(r.seed_sd),
                 *_delta_cells(r)]
        if has_ref:
            cells.append(_fmt(r.reference))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + _method_note(table, rope)


def _delta_cells(r) -> tuple[str, str]:
    """The Δ cell and the probabilities cell of one row."""
    if r.baseline:
        return "baseline", "–"
    if r.delta_note:
        return r.delta_note, "–"
    if r.pairs == 1:
        return f"{r.delta:+.4f} (one paired fold: no interval)", "–"
    detected = "" if (r.delta_low > 0 or r.delta_high < 0) else " (not detected)"
    return (f"{r.delta:+.4f} [{r.delta_low:+.4f}, {r.delta_high:+.4f}]{detected}",
            f"{r.p_better:.2f} / {r.p_equivalent:.2f} / {r.p_worse:.2f}")


def _method_note(table: pd.DataFrame, rope: float) -> str:
    """What the Δ and P columns are, under the table: a reader should not have to guess."""
    compared = table[table["pairs"] >= 2]
    if compared.empty:
        sizes = ""
    elif compared["ratio_recorded"].all():
        sizes = ", n_val/n_train from the runs' fold sizes"
    else:
        sizes = ", n_val/n_train = 1/(K-1) from cv.n_folds where runs did not record their fold sizes"
    return (f"Δ = row - baseline (negative: lower RMSE), seeds averaged within each fold; 95% corrected resampled "
            f"t-interval over the k paired folds (k-1 dof, variance × (1/k + n_val/n_train){sizes}). "
            f"P: Bayesian correlated t-test, better Δ < -{rope:g}, ≈ |Δ| ≤ {rope:g}, worse Δ > +{rope:g} "
            f"(table.rope). ± and seed sd are sample sds.")


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


def write_table(tracker: Tracker, out_dir: Path, baseline: str | None = None, log_to_mlflow: bool = True,
                rope: float = DEFAULT_ROPE) -> tuple[str, dict]:
    folds = fold_frame(tracker)
    table = build_table(folds, baseline, rope)
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

