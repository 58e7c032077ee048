"""Every config group option composes, validates, and the presets carry the reference rows."""

from __future__ import annotations

import pytest

from ftsweep.config import validate
from ftsweep.errors import ConfigError

from conftest import CONF, compose_cfg, run_cli

GROUPS = ["data", "model", "head", "optimizer", "scheduler", "reinit", "swa", "eval", "trainer", "cv", "tracking",
          "experiment"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(tmp_path, group, option):
    extra = ["data.path=/some/train.csv"] if (group, option) == ("data", "commonlit") else []
    if group == "swa" and option == "on":
        extra.append("trainer.epochs=5")
    cfg = compose_cfg([f"{group}={option}", *extra], tmp_path)
    validate(cfg)
    assert cfg.tracking.uri.startswith("sqlite:///")


def test_expected_options_exist():
    assert {o for g, o in OPTIONS if g == "model"} >= {"minilm_l6", "roberta_base", "bert_base", "deberta_v3_base", "tiny"}
    assert {o for g, o in OPTIONS if g == "head"} == {"pooler", "cls", "mean", "attention"}
    assert {o for g, o in OPTIONS if g == "optimizer"} == {"adamw", "llrd", "grouped_llrd"}
    assert {o for g, o in OPTIONS if g == "data"} == {"demo", "commonlit"}
    assert len([o for g, o in OPTIONS if g == "experiment"]) == 7


def test_presets_are_the_reference_rows(tmp_path):
    refs = {}
    for _, option in [x for x in OPTIONS if x[0] == "experiment"]:
        cfg = compose_cfg([f"experiment={option}", "model=roberta_base"], tmp_path)
        validate(cfg, 12)
        refs[cfg.label] = cfg.reference_rmse
    assert refs["Basic fine-tuning"] == 0.589
    assert refs["Grouped LLRD (50 warm-up steps) + re-initialize top 5 layers + SWA + frequent evaluation"] == 0.5199
    cfg = compose_cfg(["experiment=grouped_llrd_warmup_reinit_swa_frequent", "model=roberta_base"], tmp_path)
    assert cfg.optimizer.group_lrs == [1e-6, 1.75e-6, 3.5e-6] and cfg.optimizer.head_lr == 3.6e-6
    assert cfg.swa.lr == 2e-6 and cfg.reinit.n == 5 and cfg.scheduler.warmup_steps == 50
    assert cfg.eval.every_n_batches == 10 and cfg.trainer.epochs == 5


def test_rates_follow_the_model_base_rate(tmp_path):
    cfg = compose_cfg(["optimizer=llrd", "model.lr=2e-5"], tmp_path)
    assert cfg.optimizer.lr == pytest.approx(7e-5) and cfg.optimizer.head_lr == pytest.approx(7.2e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["cv.n_folds=1"], "cv.n_folds=1 must be an integer >= 2"),
        (["trainer.batch_size=0"], "trainer.batch_size=0 must be a positive integer"),
        (["scheduler.warmup_steps=5", "scheduler.warmup_ratio=0.1"], "both set"),
        (["swa=on", "swa.start_epoch=3"], "swa.start_epoch=3 must be before the last epoch"),
        (["swa=on", "swa.start_fraction=1.0"], "swa.start_fraction=1.0 must be in (0, 1)"),
        (["swa=on", "swa.lr_scale=0.5"], "exactly one of swa.lr"),
        (["eval=frequent", "eval.every_n_batches=0"], "eval.every_n_batches=0 must be a positive integer"),
        (["optimizer=grouped_llrd", "optimizer.n_groups=4"], "group_lrs has 3 rates for optimizer.n_groups=4"),
        (["trainer.precision=fp16"], "trainer.precision='fp16' is not one of auto, bf16, fp32"),
        (["optimizer.lr=-1"], "optimizer.lr=-1 must be a positive number"),
    ],
)
def test_impossible_configs_are_refused(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(overrides, tmp_path), 6)
    assert message in str(err.value)


def test_reinit_deeper_than_the_model(tmp_path):
    with pytest.raises(ConfigError, match="reinit.n=7 but .* has 6 encoder layers"):
        validate(compose_cfg(["reinit=on", "reinit.n=7"], tmp_path), 6)


def test_help_and_cfg_job(tmp_path):
    out = run_cli("ftsweep", "--help", cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and "optimizer: adamw, grouped_llrd, llrd" in out.stdout
    out = run_cli("ftsweep", "optimizer=grouped_llrd", "swa=on", "--cfg", "job", cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and "name: grouped_llrd" in out.stdout and "enabled: true" in out.stdout
