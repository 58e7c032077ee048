"""The search space read from Hydra's sweep syntax, the sweeper's settings, and what is refused."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from ftsweep.errors import FtsweepError
from ftsweep.search.settings import Settings, make_sampler
from ftsweep.search.space import format_value, parse


def test_hydra_sweep_syntax_becomes_optuna_distributions():
    space = parse(["model=tiny", "model.lr=tag(log, interval(1e-5, 3e-4))", "reinit.n=range(0, 4)",
                   "optimizer=adamw,llrd", "+extra.x=choice(1, 2.5, abc)"],
                  {"optimizer.layer_decay": "interval(0.7, 1.0)", "eval.every_n_batches": "interval(5, 50)"},
                  int_keys={"eval.every_n_batches"})
    assert space.fixed == ["model=tiny"]
    assert space.params == {
        "optimizer.layer_decay": FloatDistribution(0.7, 1.0),
        "eval.every_n_batches": IntDistribution(5, 50),
        "model.lr": FloatDistribution(1e-5, 3e-4, log=True),
        "reinit.n": IntDistribution(0, 3),  # Hydra's range stops before its end
        "optimizer": CategoricalDistribution(["adamw", "llrd"]),
        "extra.x": CategoricalDistribution([1, 2.5, "abc"]),
    }
    assert space.adds == {"extra.x"}
    overrides = space.overrides({"model.lr": 3.2e-05, "reinit.n": 2, "extra.x": "abc", "optimizer": "llrd"})
    assert overrides == ["model=tiny", "model.lr=3.2e-05", "reinit.n=2", "+extra.x=abc", "optimizer=llrd"]


def test_the_command_line_wins_over_params_and_ranges_keep_their_step():
    space = parse(["model.lr=interval(1e-5, 2e-5)", "swa.lr_scale=range(0.1, 0.5, 0.1)"],
                  {"model.lr": "interval(1e-3, 1e-2)"})
    assert space.params["model.lr"] == FloatDistribution(1e-5, 2e-5)
    assert space.params["swa.lr_scale"] == FloatDistribution(0.1, 0.4, step=0.1)


@pytest.mark.parametrize("override, words", [
    ("model.lr=interval(3e-4, 1e-5)", "interval is empty"),
    ("model.lr=interval(1e-4, 1e-4)", "interval is empty"),
    ("model.lr=tag(log, interval(0, 1e-4))", "lower bound > 0"),
    ("reinit.n=range(3, 3)", "range is empty"),
    ("reinit.n=tag(log, choice(1, 2))", "needs an interval or a range"),
    ("reinit.n=choice(1, 1)", "lists a value twice"),
    ("data.path=glob(*)", "interval(...), range(...), choice(...)"),
    ("model.lr=interval(1e-5", "cannot read the override"),
    ("eval.every_n_batches=interval(2.5, 10)", "give integer bounds"),
    ("model.lr=tag(lgo, interval(1e-5, 1e-3))", "unknown tag lgo; the one tag a search reads is log"),  # was linear
])
def test_bad_search_spaces_are_refused(override, words):
    with pytest.raises(FtsweepError, match=words.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        parse([override], None, int_keys={"eval.every_n_batches"})


def test_an_empty_space_is_refused():
    with pytest.raises(FtsweepError, match="search space is empty"):
        parse(["model=tiny", "trainer.epochs=2"], None)


@pytest.mark.parametrize("value", ["sweep model.lr=tag(log, interval(1e-5, 3e-4)) a,b", "it's", "back\\slash",
                                   "ends\\", "q\\'x", "null", "true", "12", " padded ", "ünï", "a=b"])
def test_values_survive_hydra_quoting(value):
    parsed = OverridesParser.create().parse_overrides([f"search.study={format_value(value)}"])[0]
    assert parsed.value() == value


@pytest.mark.parametrize("value", [1.0000000000000002e-05, 0.1, 3, True, None, -2.5e-300])
def test_sampled_numbers_keep_every_digit(value):
    assert OverridesParser.create().parse_overrides([f"x={format_value(value)}"])[0].value() == value


def _job_cfg():
    return OmegaConf.create({"tracking": {"uri": "sqlite:////tmp/x/mlflow.db"}, "paths": {"output_root": "/tmp/x"}})


def test_a_whole_number_written_as_a_float_is_taken():
    settings = Settings.read(OmegaConf.create({"n_trials": 1e3, "n_jobs": 2.0}), _job_cfg(), "s")
    assert (settings.n_trials, settings.n_jobs) == (1000, 2) and isinstance(settings.n_trials, int)


def test_settings_default_to_a_study_beside_the_mlflow_store():
    settings = Settings.read(OmegaConf.create({"n_trials": 3}), _job_cfg(), "sweep x")
    assert (settings.storage, settings.study_name, settings.n_jobs, settings.direction) == (
        "sqlite:////tmp/x/optuna.db", "sweep x", 1, "minimize")


@pytest.mark.parametrize("timeout", [0, -5, "1h", True, float("nan")])
def test_a_budget_that_is_not_seconds_is_refused(timeout):
    with pytest.raises(FtsweepError, match=r"hydra.sweeper.timeout=.* must be a number of seconds > 0"):
        Settings.read(OmegaConf.create({"n_trials": 2, "timeout": timeout}), _job_cfg(), "s")
    assert Settings.read(OmegaConf.create({"n_trials": 2, "timeout": 90}), _job_cfg(), "s").timeout == 90.0


def test_the_objective_is_read_and_a_wrong_one_refused():
    assert Settings.read(OmegaConf.create({"n_trials": 2}), _job_cfg(), "s").objective == "rmse_best"
    assert Settings.read(OmegaConf.create({"n_trials": 2, "objective": "oof"}), _job_cfg(), "s").objective == "oof"
    with pytest.raises(FtsweepError, match="hydra.sweeper.objective='best' is not one of rmse_best, rmse_last, oof."):
        Settings.read(OmegaConf.create({"n_trials": 2, "objective": "best"}), _job_cfg(), "s")


@pytest.mark.parametrize("keys", [["data.max_rows"], ["model.lr", "cv.fold_seed"], ["data"], ["+cv.n_bins"]])
def test_keys_that_move_the_rows_are_refused_in_a_search(keys):
    from ftsweep.search.sweeper import check_rows_fixed

    with pytest.raises(FtsweepError, match="run one study per dataset and fold assignment"):
        check_rows_fixed(keys)
    check_rows_fixed(["model.lr", "trainer.seed", "optimizer.layer_decay", "eval.every_n_batches"])  # rows stay


def test_searching_the_evaluation_cadence_under_rmse_best_says_what_it_costs(caplog):
    from ftsweep.search.sweeper import SELECTION_OPTIMISM, warn_selection

    warn_selection(["model.lr", "eval.every_n_batches"], "rmse_last")
    warn_selection(["model.lr"], "rmse_best")
    assert caplog.messages == []
    warn_selection(["model.lr", "eval.every_n_batches"], "rmse_best")
    assert len(caplog.messages) == 1 and "eval.every_n_batches is searched under hydra.sweeper.objective=rmse_best" \
        in caplog.messages[0] and SELECTION_OPTIMISM in caplog.messages[0]


@pytest.mark.parametrize("sweeper, words", [
    ({"n_trials": 0}, "n_trials=0 must be a whole number >= 1"),
    ({"n_trials": 2.5}, "n_trials=2.5"),
    ({"n_trials": 2, "n_jobs": 0}, "n_jobs=0"),
    ({"n_trials": 2, "direction": "maximize"}, "use direction=minimize"),
    ({"n_trials": 2, "direction": ["minimize", "minimize"]}, "optimises one value"),
    ({"n_trials": 2, "max_failure_rate": 1.5}, "max_failure_rate=1.5"),
    # the trials' jobs cannot see an in-memory database: every trial failed with KeyError
    ({"n_trials": 2, "storage": "sqlite:///"}, "an in-memory database is not seen by the trials' jobs"),
    ({"n_trials": 2, "storage": "sqlite:///:memory:"}, "an in-memory database"),
    ({"n_trials": 2, "study_name": ["a", "b"]}, "study_name=['a', 'b'] must be a name of 1 to 500 characters"),
    ({"n_trials": 2, "study_name": ""}, "study_name='' must be a name"),
    ({"n_trials": 2, "study_name": "x" * 501}, "must be a name of 1 to 500 characters"),
])
def test_impossible_settings_are_refused(sweeper, words):
    with pytest.raises(FtsweepError, match=words.replace("[", r"\[")):
        Settings.read(OmegaConf.create(sweeper), _job_cfg(), "s")


def test_a_resumed_seeded_sampler_moves_its_seed_on():
    spec = OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 42})
    assert make_sampler(spec, 0)._rng.rng.random() == make_sampler(spec, 0)._rng.rng.random()
    assert make_sampler(spec, 5)._rng.rng.random() != make_sampler(spec, 0)._rng.rng.random()
    with pytest.raises(FtsweepError, match="must be an Optuna sampler"):
        make_sampler(OmegaConf.create({"_target_": "collections.OrderedDict"}), 0)
    from ftsweep.config.rules import show

    for seed in ("abc", 1.5, -1, 2**32, True):  # on a resumed study `abc` was a traceback
        with pytest.raises(FtsweepError) as err:
            make_sampler(OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": seed}), 5)
        assert str(err.value) == f"hydra.sweeper.sampler.seed={show(seed)} must be an integer in [0, 4294967295] (or null)."
    assert make_sampler(OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 2**32 - 1}), 5)


@pytest.mark.parametrize("kind", ["sampler", "pruner"])
def test_every_shipped_sampler_and_pruner_config_builds(kind):
    from ftsweep.search.settings import check_pruner

    folder = Path(__file__).resolve().parents[1] / "conf" / "hydra" / "sweeper" / kind
    files = sorted(folder.glob("*.yaml"))
    assert len(files) >= 4
    for path in files:
        spec = OmegaConf.load(path)
        if kind == "sampler":
            assert isinstance(make_sampler(spec, 3), optuna.samplers.BaseSampler)
        else:
            check_pruner(spec)


def test_a_storage_beside_a_file_and_a_missing_extension_are_one_line(tmp_path, capsys):
    from ftsweep.search.settings import extension
    from ftsweep.search.study import open_storage

    (tmp_path / "afile").write_text("x")
    with pytest.raises(FtsweepError, match="cannot open the Optuna storage"):
        open_storage(f"sqlite:///{tmp_path}/afile/optuna.db")
    fix = "give module.function(cfg, trial), importable from where you run the command."
    for path, why in [("nomod.fn", "ModuleNotFoundError: No module named 'nomod'"),  # the reason, not just the path
                      ("json.no_such_fn", "AttributeError: module 'json' has no attribute 'no_such_fn'"),
                      ("json.decoder", "not a function"), ("loads", "not a dotted path")]:
        with pytest.raises(FtsweepError) as err:
            extension(path)
        assert str(err.value) == f"hydra.sweeper.custom_search_space={path!r}: {why}; {fix}"
    assert extension("json.loads") is __import__("json").loads
    assert capsys.readouterr() == ("", "")  # nothing logged beside the one line
