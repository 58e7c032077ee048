"""The answer of a search: the best config (best.yaml, and as overrides), the top trials with the
fold-paired comparison of the results table, the optimisation history and the parameter
importances as PNGs, all logged to MLflow as one "search summary" run in the sweep's experiment.
"""

from __future__ import annotations

import json
import logging
import shlex
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from ftsweep.errors import FtsweepError  # noqa: E402
from ftsweep.search.study import lineage, lineage_counts  # noqa: E402
from ftsweep.sweep.table import build_table, fold_frame, pruned_markdown, to_markdown  # noqa: E402
from ftsweep.tags import (
    KIND_TAG,
    OVERRIDES_TAG,  # noqa: E402
    STUDY_TAG,  # noqa: E402
)
from ftsweep.tracking.naming import experiment_name  # noqa: E402
from ftsweep.tracking.store import Tracker  # noqa: E402

log = logging.getLogger("ftsweep")
SUMMARY_KIND = "search summary"

# what the study minimised, in the summary's words (hydra.sweeper.objective)
OBJECTIVE_WORDS = {"rmse_best": "mean CV RMSE", "rmse_last": "mean CV RMSE of the last weights", "oof": "OOF RMSE"}

def summarize(study: optuna.Study, space, settings, shared: DictConfig, compose, out_dir: Path) -> None:
    """Write, log and print the search's answer. A summary that cannot be made (no trial
    finished, a store gone) is said in one line; the trials stay in the study and MLflow."""
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    counts, retried = lineage_counts(trials)  # a trial retried after its job died counts once
    again = f" ({retried} attempt(s) cut short and retried)" if retried else ""
    head = (f"\nSearch {study.study_name!r}: {counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} "
            f"pruned, {counts[TrialState.FAIL]} failed trial(s){again}; storage {settings.storage}")
    print(head)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:  # pruning is what more trials or a milder pruner help with; failures are listed next
        advice = (" Raise hydra.sweeper.n_trials (the study goes on from here) or prune less "
                  "(hydra/sweeper/pruner=...)." if counts[TrialState.PRUNED] else "")
        print(f"ftsweep: no trial has finished all its folds: no best config yet.{advice}")
        return
    best = min(complete, key=lambda t: t.value)
    scored = OBJECTIVE_WORDS[settings.objective]
    files = {"best": _write_best(best, study.study_name, space, compose, out_dir, scored)}
    tracker = Tracker(str(shared.tracking.uri), experiment_name(shared, True))
    folds = _study_folds(tracker, study.study_name)
    top, folds_trained = "", 0
    if folds is not None:
        folds_trained = len(folds)
        rank_by = "rmse_last" if settings.objective == "rmse_last" else "rmse_best"
        top = _top_trials(folds, f"trial {lineage(best)}", (settings.top, rank_by), out_dir, files)
    files.update(_figures(study, out_dir))
    n_folds = int(shared.cv.n_folds) if shared.cv.get("folds") is None else len(shared.cv.folds)
    finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    overrides = as_command(trial_overrides(best, space))
    print(f"Folds trained: {folds_trained} of {finished} x {n_folds} = {finished * n_folds} without pruning\n"
          f"Best: trial {lineage(best)}, {scored} {best.value:.4f}\n"
          f"  python -m ftsweep --config-dir {shlex.quote(str(out_dir))} --config-name best\n"
          f"  {overrides}\n")
    if top:
        print(top + "\n")
    values = {"best_rmse": best.value, "trials_complete": counts[TrialState.COMPLETE],
              "trials_pruned": counts[TrialState.PRUNED], "trials_failed": counts[TrialState.FAIL],
              "folds_trained": folds_trained, "folds_without_pruning": finished * n_folds}
    _log_run(tracker, study.study_name, best, values, files)
    print(f"written: {out_dir}\nThe search summary and the trials in the MLflow UI (make ui): {tracker.runs_link()}")


def _write_best(best: optuna.trial.FrozenTrial, study_name: str, space, compose, out_dir: Path, scored: str) -> Path:
    """A primary config: ftsweep's config, the trial's config group choices, then its values."""
    overrides = trial_overrides(best, space)
    cfg = compose(overrides, keep_hydra=True)
    # sweep/*: a preset whose values and group choices are already here (it would turn multirun on again)
    choices = {g: c for g, c in cfg.hydra.runtime.choices.items()
               if c is not None and not g.startswith("hydra/") and g != "sweep"}
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.pop("search", None)
    lines = [f"# Best trial (trial {lineage(best)}) of the study {study_name!r}",
             f"# {scored} {best.value:.6f}",
             f"# Run it:  python -m ftsweep --config-dir {shlex.quote(str(out_dir))} --config-name best",
             f"# or:      {as_command(overrides)}",
             "defaults:", "  - config"]
    lines += [f"  - override {group}: {json.dumps(str(choice))}" for group, choice in choices.items()]  # "off"
    lines += ["  - _self_", "", OmegaConf.to_yaml(cfg)]
    path = out_dir / "best.yaml"
    path.write_text("\n".join(lines))
    return path


def as_command(overrides: list[str]) -> str:
    """The trial as one command line, shell-quoted; a sweep preset would start a search again."""
    if any(o.lstrip("+").startswith("sweep=") for o in overrides):
        return "(a sweep preset switches to multirun: run best.yaml as above)"
    return "python -m ftsweep " + " ".join(shlex.quote(o) for o in overrides)


def trial_overrides(trial: optuna.trial.FrozenTrial, space) -> list[str]:
    """The overrides the trial ran with (a study continued with other fixed overrides keeps each trial's)."""
    return list(trial.user_attrs.get(OVERRIDES_TAG) or space.overrides(trial.params))


def _study_folds(tracker: Tracker, study_name: str) -> pd.DataFrame | None:
    try:
        folds = fold_frame(tracker)
    except FtsweepError:
        return None
    folds = folds[folds["study"] == study_name]
    return folds if not folds.empty else None


def _top_trials(folds: pd.DataFrame, best_label_prefix: str, shown: tuple[int, str], out_dir: Path, files: dict) -> str:
    """The `top` trials ranked by mean CV RMSE (`rank_by`: of the best checkpoints or the last weights);
    Δ is each trial against the best, paired by fold: is the winner ahead of the runners-up by more
    than the fold-to-fold noise?"""
    top, rank_by = shown
    complete = folds[~folds["pruned"]]
    parts = []
    if not complete.empty:
        labels = complete["label"].unique()
        best_label = next((lab for lab in labels if lab.startswith(best_label_prefix + ":")), labels[0])
        table = build_table(complete, baseline=best_label).sort_values(rank_by).head(top)
        parts.append(to_markdown(table.reset_index(drop=True)))
        table.drop(columns=["start_time", "job_num", "data"]).to_csv(out_dir / "top_trials.csv", index=False)
        files["top_csv"] = out_dir / "top_trials.csv"
    parts.append(pruned_markdown(folds))
    markdown = "\n\n".join(p for p in parts if p)
    (out_dir / "top_trials.md").write_text(markdown + "\n")
    files["top_md"] = out_dir / "top_trials.md"
    return markdown


def _figures(study: optuna.Study, out_dir: Path) -> dict[str, Path]:
    """Optimisation history and parameter importances; importances need two complete trials
    with different values, and are skipped (with a line) until then."""
    from optuna.visualization import matplotlib as plots

    made = {}
    for name, draw in (("optimization_history", plots.plot_optimization_history),
                       ("param_importances", plots.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna.exceptions.ExperimentalWarning
                ax = draw(study)
            figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figure.savefig(out_dir / f"{name}.png", dpi=110)
            plt.close(figure)
            made[name] = out_dir / f"{name}.png"
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            log.warning("search: no %s figure yet (%s)", name.replace("_", " "), str(exc).splitlines()[0][:200])
    return made


def _log_run(tracker: Tracker, study_name: str, best, values: dict, files: dict) -> None:
    """One summary run per study: an earlier one (a previous run of the same command) is replaced."""
    for old in tracker.runs_tagged(STUDY_TAG, study_name):
        if old.data.tags.get(KIND_TAG) == SUMMARY_KIND:
            tracker.delete_run(old.info.run_id)
    run = tracker.start_run(SUMMARY_KIND, {KIND_TAG: SUMMARY_KIND, STUDY_TAG: study_name,
                                           "mlflow.note.content": f"Best trial of the Optuna study {study_name!r}."})
    tracker.log_params(run, {f"best.{key}": str(value) for key, value in best.params.items()})
    tracker.log_values(run, values)
    for path in files.values():
        tracker.log_artifact(run, path)
    tracker.finish(run, "FINISHED")
