"""Every config group option composes, validates, and the presets carry the reference rows."""

from __future__ import annotations

import pytest

from ftsweep.config.checks import validate
from ftsweep.errors import ConfigError

from helpers import CONF, compose_cfg, compose_conf, run_cli

GROUPS = ["data", "model", "head", "optimizer", "scheduler", "reinit", "swa", "eval", "trainer", "cv", "tracking",
          "experiment"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(tmp_path, monkeypatch, group, option):
    extra = ["data.path=/some/train.csv"] if (group, option) == ("data", "commonlit") else []
    if group == "swa" and option == "on":
        extra.append("trainer.epochs=5")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose_conf([f"{group}={option}", *extra], tmp_path)  # conf/'s own tracking.uri, not the tests' store
    validate(cfg)
    assert cfg.tracking.uri == f"sqlite:///{tmp_path}/mlflow.db"  # the default store under paths.output_root


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
    # the row label names the layers re-initialised: the write-up's 5 on roberta, MiniLM's own 2 (of 6)
    minilm = compose_cfg(["experiment=llrd_warmup_reinit_swa"], tmp_path)
    assert (minilm.reinit.n, minilm.label) == (2, "LLRD (50 warm-up steps) + re-initialize top 2 layers + SWA")


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
        (["swa=on", "swa.start_fraction=1.0"], "swa.start_fraction=1.0 must be a number in (0, 1)"),
        (["swa=on", "swa.lr_scale=0.5"], "exactly one of swa.lr"),
        (["eval=frequent", "eval.every_n_batches=0"], "eval.every_n_batches=0 must be a positive integer"),
        (["optimizer=grouped_llrd", "optimizer.n_groups=4"], "group_lrs has 3 rates for optimizer.n_groups=4"),
        (["trainer.precision=fp16"], "trainer.precision='fp16' is not one of auto, bf16, fp32"),
        (["optimizer.lr=-1"], "optimizer.lr=-1 must be a positive number"),
        # every numeric key: type and range, named as the user typed it
        (["model.lr=-1", "optimizer=llrd"], "model.lr=-1 must be a positive number"),
        (["trainer.grad_clip=-1"], "trainer.grad_clip=-1 must be a positive number (or null)"),
        (["trainer.grad_clip=0"], "trainer.grad_clip=0 must be a positive number (or null)"),
        (["trainer.seed=-1"], "trainer.seed=-1 must be an integer in [0, 4294967295]"),
        (["cv.fold_seed=-1"], "cv.fold_seed=-1 must be an integer in [0, 4294967295]"),
        (["trainer.num_threads=-1"], "trainer.num_threads=-1 must be an integer >= 1 (or null)"),
        (["data.max_rows=-1"], "data.max_rows=-1 must be an integer >= 1 (or null)"),
        (["data.max_rows=3"], "data.max_rows=3 cannot be split into cv.n_folds=5 folds"),
        (["cv.n_bins=-1"], "cv.n_bins=-1 must be an integer >= 1 (or null)"),
        (["head.dropout=1.5"], "head.dropout=1.5 must be a number in [0, 1)"),
        (["optimizer.weight_decay=abc"], "optimizer.weight_decay='abc' must be a number >= 0"),
        (["trainer.epochs=2.5"], "trainer.epochs=2.5 must be a positive integer"),
        (["trainer.epochs=true"], "trainer.epochs=true must be a positive integer"),
        (["model.lr=nan"], "model.lr=nan must be a positive number"),
        (["trainer.max_length=4"], "trainer.max_length=4 must be an integer >= 8"),
        (["optimizer=grouped_llrd", "optimizer.group_lrs=[1e-5,0,1e-5]"], "optimizer.group_lrs[1]=0 must be"),
        (["optimizer.betas=[0.9,1.5]"], "optimizer.betas=[0.9, 1.5] must be two numbers in [0, 1)"),
        (["cv.folds=[0,0]"], "distinct fold numbers"),
        (["cv.folds=0"], "cv.folds=0 must be a list of fold numbers, e.g. cv.folds=[0]"),
        (["trainer.epochs=null"], "trainer.epochs=null must be a positive integer"),
        (["model.config_overrides.hidden_dropout_prob=1.5"], "model.config_overrides.hidden_dropout_prob=1.5 must be"),
        (["model.config_overrides.hidden_dropout_prob=abc"], "hidden_dropout_prob='abc' must be a number in [0, 1)"),
        # keys nothing reads: a typo that Hydra's `+` would let through
        (["trainer.save_models=yes"], "trainer.save_models='yes' must be true or false"),
        (["tracking.resume=sometimes"], "tracking.resume='sometimes' is not one of auto, true, false"),
        (["+trainer.epoch=3"], "unknown key trainer.epoch: nothing reads it (did you mean trainer.epochs?)"),
        (["+optimizer.layerdecay=0.8"], "unknown key optimizer.layerdecay"),
        (["tracking.system_metrics_interval=0"], "tracking.system_metrics_interval=0 must be a positive number (or null)"),
        (["+lable=x"], "unknown key lable: nothing reads it (did you mean label or table?)"),
        # no key close: a pointer, not every known key (~600 characters before)
        (["+trainer.zzzz=1"], "unknown key trainer.zzzz: nothing reads it (python -m ftsweep --cfg job lists the keys)."),
        (["~trainer.seed"], "trainer.seed is missing (removed with ~?)"),
        (["data=commonlit"], "data=commonlit needs a file: add data.path=/path/to/train.csv"),
    ],
)
def test_impossible_configs_are_refused(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(overrides, tmp_path), 6)
    assert message in str(err.value)


def test_layer_decay_above_one_warns(tmp_path, caplog):
    validate(compose_cfg(["optimizer=llrd", "optimizer.layer_decay=1.2"], tmp_path), 6)
    assert "lower layers get *higher* rates" in caplog.text


def test_reinit_deeper_than_the_model(tmp_path):
    with pytest.raises(ConfigError, match="reinit.n=7 but .* has 6 encoder layers"):
        validate(compose_cfg(["reinit=on", "reinit.n=7"], tmp_path), 6)


def test_help_and_cfg_job(tmp_path):
    out = run_cli("ftsweep", "--help", cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and "optimizer: adamw, grouped_llrd, llrd" in out.stdout
    assert out.stdout.startswith("ftsweep: ")  # not Hydra's "__main__ is powered by Hydra."
    examples = [line.split("#")[0].split() for line in out.stdout.splitlines() if line.startswith("  python -m ftsweep")]
    assert examples == [["python", "-m", "ftsweep"],
                        ["python", "-m", "ftsweep", "optimizer=grouped_llrd", "swa=on", "eval=frequent"],
                        ["python", "-m", "ftsweep", "-m", "reinit.n=0,1,2,3,4,5,6"]]
    out = run_cli("ftsweep", "optimizer=grouped_llrd", "swa=on", "--cfg", "job", cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and "name: grouped_llrd" in out.stdout and "enabled: true" in out.stdout
