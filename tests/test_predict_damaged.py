"""A run's saved models damaged in the store (a fold's weights deleted, copied in, truncated, of
another backbone; its config or its artifacts gone): ftsweep.predict averages exactly the run's
folds, says how many, and refuses anything else in one line, never a traceback or NaN targets."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ftsweep.cv.pipeline import run_cv
from ftsweep.data.demo import generate
from ftsweep.ensemble.predict import predict_csv
from ftsweep.jobs import run_guarded

from helpers import CONF, TINY, compose_cfg, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A finished 2-fold tiny run with its MLflow model; its model folder; a test CSV."""
    root = tmp_path_factory.mktemp("damaged")
    cfg = compose_cfg([*TINY, "trainer.save_models=true"], root)
    parent = run_cv(cfg).parent_run_id
    generate(6, words_per_passage=12, seed=3)[["id", "excerpt"]].to_csv(root / "test.csv", index=False)
    (folder,) = root.glob("artifacts/models/*/artifacts/artifacts/ensemble")
    return cfg, parent, folder, root


@contextlib.contextmanager
def restored(folder: Path):
    """Whatever the test does to `folder` is undone on exit."""
    keep = folder.parent / f"{folder.name}.kept"
    shutil.copytree(folder, keep)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)
        keep.rename(folder)


def _predict_line(saved, capsys, *overrides: str) -> tuple[int, str]:
    """predict_csv behind the commands' guard: (exit code, its one stderr line)."""
    cfg, parent, _, root = saved
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        predict_cfg = compose("predict", overrides=[f"run_id={parent}", f"data.path={root / 'test.csv'}",
                                                    f"tracking.uri={cfg.tracking.uri}", "device=cpu", *overrides])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_guarded(lambda: predict_csv(predict_cfg), None)
    err = capsys.readouterr().err.strip().splitlines()
    return stop.value.code, err[-1] if err else ""


def test_a_deleted_or_extra_fold_file_is_refused(saved, capsys):
    _, parent, folder, _ = saved
    model = f"the model of run {parent}"
    with restored(folder):
        (folder / "folds" / "fold1.safetensors").unlink()  # averaged fold 0 alone as "mean of 2" before
        assert _predict_line(saved, capsys) == (2, (
            f"ftsweep: error: {model} lacks the fold weights fold1.safetensors of its run's folds (0, 1); rerun the "
            f"run with trainer.save_models=true, or pass allow_partial=true to average the 1 it has."))
        (folder / "folds" / "fold0.safetensors").unlink()  # NaN targets, exit 0 before
        for partial in ("false", "true"):
            assert _predict_line(saved, capsys, f"allow_partial={partial}") == (2, (
                f"ftsweep: error: {model} has no fold weights (folds/ lacks fold0.safetensors, fold1.safetensors); "
                f"rerun the run with trainer.save_models=true."))
    with restored(folder):
        shutil.copy(folder / "folds" / "fold1.safetensors", folder / "folds" / "fold2.safetensors")
        assert _predict_line(saved, capsys, "allow_partial=true") == (2, (
            f"ftsweep: error: {model} has fold weights fold2.safetensors that are not of its run's folds (0, 1); "
            f"remove them from folds/, or rerun the run with trainer.save_models=true."))


def test_allow_partial_averages_and_counts_the_fold_models_it_has(saved, tmp_path):
    cfg, parent, folder, root = saved
    with restored(folder):
        (folder / "folds" / "fold1.safetensors").unlink()
        out = run_cli("ftsweep.predict", f"run_id={parent}", f"data.path={root / 'test.csv'}", "allow_partial=true",
                      f"output={tmp_path / 'sub.csv'}", f"tracking.uri={cfg.tracking.uri}",
                      f"paths.output_root={tmp_path}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == f"wrote {tmp_path / 'sub.csv'}: 6 rows, mean of 1 fold models"


def test_damaged_model_files_are_one_line(saved, capsys):
    _, parent, folder, root = saved
    model = f"the model of run {parent}"
    with restored(folder):
        weights = folder / "folds" / "fold0.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        code, line = _predict_line(saved, capsys)
        assert code == 2 and line.startswith(f"ftsweep: error: the fold weights fold0.safetensors of {model} cannot "
                                             f"be read (") and line.endswith(
            "); the file is damaged: rerun the run with trainer.save_models=true."), line
    with restored(folder):
        backbone = folder / "backbone" / "config.json"
        backbone.write_text(json.dumps({**json.loads(backbone.read_text()), "intermediate_size": 48}))
        code, line = _predict_line(saved, capsys)
        assert code == 2 and line.startswith(f"ftsweep: error: the fold weights fold0.safetensors of {model} do not "
                                             "fit its backbone tiny-bert (size mismatch for ") and line.endswith(
            "); the weights are of another model: rerun the run with trainer.save_models=true."), line
    with restored(folder):
        (folder / "config.yaml").unlink()
        assert _predict_line(saved, capsys) == (2, (
            f"ftsweep: error: {model} has no config.yaml (the run's config); rerun the run with "
            f"trainer.save_models=true."))
    kept = root / "artifacts.kept"
    (root / "artifacts").rename(kept)  # every artifact of the store gone
    try:
        code, line = _predict_line(saved, capsys)
    finally:
        kept.rename(root / "artifacts")
    assert code == 2 and line.startswith(f"ftsweep: error: run {parent} lacks its artifact config.yaml at ") and (
        line.endswith("; rerun the run with trainer.save_models=true.")), line
