"""Hydra's own refusals (an unknown key or option, a sweep without -m, the Optuna sweeper without
Optuna, a sweep folder that cannot be made) in one line and exit 2, before any job."""

from __future__ import annotations

import os
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from ftsweep.config.command_line import check, closest
from ftsweep.errors import ConfigError, FtsweepError
from ftsweep.hydra_job import SWEEP_ID_ENV
from ftsweep.search.sweeper import Composer, build_space
from ftsweep.sweep.callback import SweepCallback
from ftsweep.tracking.naming import EXPERIMENT_ENV, SWEPT_ENV

from helpers import CONF, TINY, at_once, run_cli

REFUSED = [
    (["trainer.epoch=3"], "unknown key trainer.epoch in trainer.epoch=3: did you mean trainer.epochs?"),
    (["model.lrr=1e-4"], "unknown key model.lrr in model.lrr=1e-4: did you mean model.lr?"),
    (["trainr.epochs=2"], "unknown key trainr.epochs in trainr.epochs=2: did you mean trainer.epochs?"),
    (["~trainer.seeed"], "unknown key trainer.seeed in ~trainer.seeed: did you mean trainer.seed?"),
    (["trainer.epochs.x=1"], "unknown key trainer.epochs.x in trainer.epochs.x=1: trainer.epochs is a value, not a group of keys."),
    (["zzzz=1"], "unknown key zzzz in zzzz=1: no key is close (python -m ftsweep --cfg job lists them)."),
    (["optimizer=foo"], "optimizer=foo: optimizer has no option 'foo'; its options, closest first: grouped_llrd, llrd, adamw."),
    (["optimizer=llrdd"], "optimizer=llrdd: optimizer has no option 'llrdd' (did you mean optimizer=llrd?); its options, "
                          "closest first: llrd, grouped_llrd, adamw."),
    (["-m", "hydra/sweeper=optuna", "hydra.sweeper.pruner.foo=1"],
     "unknown key hydra.sweeper.pruner.foo in hydra.sweeper.pruner.foo=1: hydra.sweeper.pruner has _target_, "
     "alpha, min_delta, n_resamples, n_warmup_steps, seed, test."),
    (["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trial=3"],
     "unknown key hydra.sweeper.n_trial in hydra.sweeper.n_trial=3: did you mean hydra.sweeper.n_trials?"),
    # a sweep is named as typed, though composed as its first value / lower bound
    (["-m", "hydra/sweeper=optuna", "model.lrr=tag(log, interval(1e-5, 1e-4))"],
     "unknown key model.lrr in model.lrr=tag(log, interval(1e-5, 1e-4)): did you mean model.lr?"),
    # a key that only some options of a swept group have: every option is composed, not just the first
    (["-m", "optimizer=llrd,adamw", "optimizer.layer_decay=0.9"],
     "optimizer.layer_decay=0.9: optimizer=adamw has no key layer_decay; optimizer=llrd has it."),
    (["-m", "hydra/sweeper=optuna", "optimizer=choice(adamw, llrd)", "optimizer.layer_decay=interval(0.8, 0.95)"],
     "optimizer.layer_decay=interval(0.8, 0.95): optimizer=adamw has no key layer_decay; optimizer=llrd has it."),
    (["reinit.n=0,1"], "reinit.n=0,1 is a sweep: add -m to run one job per value (or a search); for one list value "
                       "write reinit.n=[0,1]."),
    (["model.lr=interval(1e-5, 1e-4)"], "model.lr=interval(1e-5, 1e-4) is a sweep: add -m to run one job per value "
                                        "(or a search)."),
    (["sweep=table1"], "sweep=table1: sweep is not in the defaults list; add it with +sweep=table1."),
    (["+trainer.epochs=3"], "+trainer.epochs=3: trainer.epochs is already in the config; drop the + (trainer.epochs=3)."),
    (["--cfg", "job", "head.typ=cls"], "unknown key head.typ in head.typ=cls: did you mean head.type?"),
    # ranges Hydra cannot step through, and a group given null: each was a traceback
    (["-m", "reinit=on", "reinit.n=range(0,2,0)"], "reinit.n=range(0,2,0): range() arg 3 must not be zero; a range "
     "needs finite numbers and a step other than 0, e.g. range(0, 4) or range(0.0, 0.2, 0.05)."),
    (["-m", "scheduler.warmup_ratio=range(0.0,nan,0.1)"], "scheduler.warmup_ratio=range(0.0,nan,0.1): a bound or the "
     "step is not a finite number; a range needs finite numbers and a step other than 0, e.g. range(0, 4) or "
     "range(0.0, 0.2, 0.05)."),
    (["-m", "hydra/sweeper=optuna", "hydra/sweeper/pruner=null"], "hydra/sweeper/pruner=null: a config group takes "
     "one of its options by name, not null (python -m ftsweep --help lists them)."),
    (["trainer.grad_clip=null", "optimizer=null"], "optimizer=null: a config group takes one of its options by name, "
     "not null (python -m ftsweep --help lists them)."),  # the group named, not the key that may be null
    (["-m", "hydra/sweeper=optuna", "hydra.sweeper.params.model.lr=interval(1e-5,1e-3)"],
     "hydra.sweeper.params.model.lr=interval(1e-5,1e-3): a key is searched by giving its range as an override of "
     "its own, model.lr=interval(1e-5,1e-3) (with -m hydra/sweeper=optuna); hydra.sweeper.params holds a preset's "
     "ranges."),  # was: did you mean hydra.sweeper.params.model.lr?
    (["-m", "trainer.seed=0,1", "hydra.sweeper.pruner.alpha=0.1"], "hydra.sweeper.pruner.alpha=0.1: "
     "hydra.sweeper.pruner belongs to a search; add -m hydra/sweeper=optuna (or -m +sweep=search_llrd)."),
    (["-m", "trainer.seed=0,1", "hydra.sweeper.max_batch_size=0"], "hydra.sweeper.max_batch_size=0 must be an integer "
     ">= 1 (or null: all jobs at once)."),
    (["trainer.seed=" + "9" * 5000], "cannot read the override 'trainer.seed=" + "9" * 87 + "…" + "9" * 20 + "': a "
     "whole number of over 4,300 digits (Hydra's override grammar: https://hydra.cc/docs/advanced/override_grammar/basic/)"),
    # MLflow's limit on an experiment's name, and an empty name (logged to 'ftsweep' silently before)
    (["tracking.experiment=" + "x" * 501], "tracking.experiment is 501 characters long; MLflow takes at most 500: "
     "give a shorter name."),
    # a fold job's folds, each sweep value checked before any job starts (a job of a bad value failed late)
    (["cv.n_folds=3", "cv.folds=[7]"], "cv.folds=[7] must be a non-empty list of distinct fold numbers in 0..2."),
    (["-m", "cv.n_folds=3", "cv.folds=[0],[1],[7]"], "cv.folds=[7] must be a non-empty list of distinct fold "
     "numbers in 0..2."),
    (["-m", "cv.folds=[0],[1,1]"], "cv.folds=[1, 1] must be a non-empty list of distinct fold numbers in 0..4."),
    (["tracking.experiment=''"], "tracking.experiment='' names no experiment; give a name "
     "(tracking.experiment=my-experiment) or null (the default: 'ftsweep' for a run, one named after its command "
     "for a sweep)."),
]


@pytest.mark.parametrize(("argv", "message"), REFUSED)
def test_what_hydra_refuses_is_one_line_with_the_closest_key(argv, message):
    with pytest.raises(ConfigError) as err:
        check(argv, "config")
    assert str(err.value) == message
    assert "To append" not in message and "+model" not in message  # Hydra's advice, ignored by other options


@pytest.mark.parametrize("argv", [
    [], ["-m", "reinit.n=0,1", "optimizer=adamw,llrd,grouped_llrd"], ["+trainer.epoch=3"],  # `+`: checks.py's job
    ["-m", "+sweep=table1"], ["-m", "experiment=glob(*)"], ["--help", "trainer.epoch=3"],
    ["-m", "hydra/sweeper=optuna", "model.lr=tag(log, interval(1e-5, 1e-4))", "reinit.n=range(0, 3)"],
    ["+sweep=search_llrd", "optimizer.layer_decay=0.8"],
    ["-m", "reinit.n=range(5, 0)", "optimizer=llrd,grouped_llrd"],  # a sweep with no value beside a swept group
    ["-m", "cv.n_folds=3", "cv.folds=[0],[1],[2]"], ["-m", "cv.folds=[0,1],[1,2]"],  # fold jobs, overlapping too
])
def test_valid_command_lines_pass(argv):
    check(argv, "config")


def test_the_extra_config_dir_is_searched(tmp_path):
    (tmp_path / "hparams_search").mkdir()
    (tmp_path / "hparams_search" / "fast.yaml").write_text("# @package _global_\ntrainer:\n  epochs: 1\n")
    check(["--config-dir", str(tmp_path), "+hparams_search=fast"], "config")
    with pytest.raises(ConfigError, match=r"^\+hparams_search=slow: hparams_search has no option 'slow'; .*: fast\.$"):
        check(["--config-dir", str(tmp_path), "+hparams_search=slow"], "config")


def test_predict_command_lines_are_checked_against_its_own_config():
    check(["run_id=abc", "output=x.csv"], "predict")
    with pytest.raises(ConfigError, match=r"^unknown key outptu in outptu=x.csv: did you mean output\?$"):
        check(["run_id=abc", "outptu=x.csv"], "predict")


def test_the_optuna_sweeper_without_optuna_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    with pytest.raises(ConfigError) as err:
        check(["-m", "hydra/sweeper=optuna", "model.lr=interval(1e-5, 1e-4)"], "config")
    assert str(err.value) == ("hydra/sweeper=optuna needs Optuna, which cannot be imported here (import of optuna "
                              "halted; None in sys.modules); install it: pip install 'optuna>=4,<6'.")
    check(["hydra/sweeper=optuna"], "config")  # a single run never starts the sweeper


def test_closest_prefers_siblings_and_never_an_ancestor():
    keys = ["trainer", "trainer.epochs", "trainer.seed", "model", "model.lr", "model.name"]
    assert closest("trainer.epoch", keys) == "trainer.epochs"
    assert closest("trainr.epochs", keys) == "trainer.epochs"
    assert closest("trainer.zzz", keys) is None  # not `trainer`


def test_a_search_value_only_some_options_accept_names_them(tmp_path):
    """A preset's searched key that the chosen group option lacks: found by the sweeper (not on the
    command line), said without echoing every override or advising `+`."""
    loader, master = _loader_and_master(tmp_path, *TINY, f"paths.output_root={tmp_path}")
    with pytest.raises(FtsweepError) as err:
        build_space([*TINY, "optimizer=adamw"], {"optimizer.layer_decay": "interval(0.8, 0.95)"}, Composer(loader, master))
    assert str(err.value) == "optimizer.layer_decay=0.8: optimizer=adamw has no key layer_decay; optimizer=llrd has it."


def _loader_and_master(tmp_path, *overrides: str):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import RunMode

    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(f"file://{CONF}"))  # as @hydra.main's
    return loader, loader.load_configuration("config", ["hydra/sweeper=optuna", *overrides], RunMode.MULTIRUN)


@pytest.mark.parametrize(("more", "composed"), [
    (["model.lr=3e-05"], False),  # read by optimizer.lr, head_lr and swa.lr through interpolations
    (["reinit.n=2", "swa.lr_scale=0.05"], False),
    (["eval.every_n_batches=40"], False),
    (["+cv.n_bins=7"], False),  # a key added
    (["optimizer=grouped_llrd"], True),  # a config group: its file is merged, so composed whole
    (["scheduler=cosine", "model.lr=1e-4"], True),
    (["model.lrr=1e-4"], True),  # Hydra refuses it: composed whole, which explains it
    (["+hydra.job.env_set.X=1"], True),  # hydra.*: not in the shared config (its hydra node is removed)
])
def test_a_search_checks_its_bounds_on_the_shared_config_as_composing_anew_would(tmp_path, more, composed):
    """A search checks every bound of its space on the job's config. Value overrides are applied to
    a copy of the config every trial shares, as Hydra applies them after merging the groups'
    files; the result equals composing the whole command line again, which happens only where a
    key names a config group (or Hydra refuses the override)."""
    from omegaconf import OmegaConf

    loader, master = _loader_and_master(tmp_path, *TINY, f"paths.output_root={tmp_path}")
    fixed = [*TINY, "optimizer=llrd", "swa=on", "reinit=on", "eval=frequent", f"paths.output_root={tmp_path}"]
    compose = Composer(loader, master)
    shared = compose(fixed)
    loads = []
    real_load = loader.load_sweep_config
    loader.load_sweep_config = lambda cfg, overrides: loads.append(overrides) or real_load(cfg, overrides)
    if more == ["model.lrr=1e-4"]:
        with pytest.raises(FtsweepError, match="unknown key model.lrr"):
            compose.extended(shared, fixed, more)
        assert loads  # composed whole (explaining the refusal composes a second time)
        return
    fast = compose.extended(shared, fixed, more)
    assert len(loads) == int(composed)
    whole = compose(fixed + more)
    assert OmegaConf.to_container(fast, resolve=True) == OmegaConf.to_container(whole, resolve=True)
    if not more[0].startswith("+hydra."):  # a hydra.* key changes only the hydra node, removed here
        assert OmegaConf.to_container(fast, resolve=True) != OmegaConf.to_container(shared, resolve=True)
    assert "model.lr" not in more[0] or fast.optimizer.head_lr == pytest.approx(3.6 * 3e-05)


def _job_dir_config(tmp_path, key: str, folder: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, f"paths.output_root={tmp_path}", f"{key}={folder}"],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.tracking.uri = f"sqlite:///{tmp_path}/mlflow.db"
    return cfg


@pytest.mark.parametrize(("key", "hook"), [("hydra.sweep.dir", "on_multirun_start"), ("hydra.run.dir", "on_run_start")])
@pytest.mark.parametrize(("folder", "problem"), [
    ("{tmp}/afile/sweep", "{tmp}/afile is a file"),
    ("/proc/ftsweep-sweep", "cannot create it: No such file or directory"),
])
def test_a_job_folder_that_cannot_be_made_stops_before_any_job(tmp_path, monkeypatch, capsys, key, hook, folder,
                                                                problem):
    for name in (EXPERIMENT_ENV, SWEPT_ENV, SWEEP_ID_ENV):  # restored afterwards
        monkeypatch.setenv(name, "")
    (tmp_path / "afile").write_text("x\n")
    folder = folder.format(tmp=tmp_path)
    with pytest.raises(SystemExit) as stop:
        getattr(SweepCallback(), hook)(_job_dir_config(tmp_path, key, folder))
    assert stop.value.code == 2
    assert capsys.readouterr().err == (f"ftsweep: error: {key}={folder}: {problem.format(tmp=tmp_path)}; "
                                       f"point {key} (or paths.output_root) at a writable folder.\n")
    assert not (tmp_path / "mlflow.db").exists()  # stopped before the store


@pytest.mark.slow
def test_cli_one_line_and_exit_2_for_hydra_errors(tmp_path):
    """The real commands: Optuna missing and a sweep folder under a file (tracebacks before) are each
    the only line on stderr, exit 2, with nothing written."""
    blocker = tmp_path / "blocker" / "optuna"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError(\"No module named 'optuna'\")\n")
    (tmp_path / "afile").write_text("x\n")
    no_optuna = {"PYTHONPATH": os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")])}
    root = f"paths.output_root={tmp_path}"
    with at_once(2) as start:
        optuna = start(run_cli, "ftsweep", "-m", "hydra/sweeper=optuna", *TINY, "model.lr=interval(1e-5, 1e-4)", root,
                       cwd=tmp_path, env=no_optuna, own_process=True)  # PYTHONPATH is read at start-up
        folder = start(run_cli, "ftsweep", "-m", *TINY, "reinit.n=0,1", f"hydra.sweep.dir={tmp_path}/afile/sweep", root,
                       cwd=tmp_path)
    expected = [
        (optuna, "hydra/sweeper=optuna needs Optuna, which cannot be imported here (No module named 'optuna'); "
                 "install it: pip install 'optuna>=4,<6'."),
        (folder, f"hydra.sweep.dir={tmp_path}/afile/sweep: {tmp_path}/afile is a file; point hydra.sweep.dir "
                 f"(or paths.output_root) at a writable folder."),
    ]
    for future, line in expected:
        out = future.result()
        assert (out.returncode, out.stderr.strip().splitlines()) == (2, [f"ftsweep: error: {line}"]), out.stderr[-2000:]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.slow
def test_an_experiment_name_mlflow_refuses_stops_before_any_store_or_study(tmp_path):
    """A 46-line traceback before, after the store (a run, a grid) or the study (a search) was made."""
    long = "tracking.experiment=" + "x" * 501
    root = f"paths.output_root={tmp_path}"
    line = "ftsweep: error: tracking.experiment is 501 characters long; MLflow takes at most 500: give a shorter name."
    with at_once(2) as start:
        outs = [start(run_cli, "ftsweep", *TINY, long, root, cwd=tmp_path),
                start(run_cli, "ftsweep", "-m", *TINY, "reinit.n=0,1", long, root, cwd=tmp_path),
                start(run_cli, "ftsweep", "-m", "hydra/sweeper=optuna", *TINY, "model.lr=interval(1e-5, 1e-4)", long,
                      root, cwd=tmp_path)]
    for out in outs:
        out = out.result()
        assert (out.returncode, out.stderr.strip().splitlines()) == (2, [line]), out.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no mlflow.db, no optuna.db, no run folder
