"""Each bad input ends in one line that says what to change, before any run exists."""

from __future__ import annotations

import errno

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from ftsweep.cv.pipeline import run_cv
from ftsweep.data.demo import generate
from ftsweep.ensemble.predict import check_args
from ftsweep.errors import ConfigError, FtsweepError
from ftsweep.jobs import run_guarded
from ftsweep.sweep.table import write_table
from ftsweep.tracking import addresses
from ftsweep.tracking.addresses import normalize_uri
from ftsweep.tracking.model_export import fold_checkpoints
from ftsweep.tracking.store import Tracker

from helpers import TINY, at_once, run_cli


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("sqlite:////proc/ftsweep-nope/mlflow.db", "cannot keep the MLflow store in /proc/ftsweep-nope (cannot create it: "),
        # as root os.access says /proc is writable; the lock file beside the store could not be opened
        ("sqlite:////proc/m.db", "cannot keep the MLflow store in /proc (cannot write in it: "),
        ("sqlite:///{tmp}/afile/mlflow.db", "cannot keep the MLflow store in {tmp}/afile ({tmp}/afile is a file)"),
        ("sqlite:///{tmp}/afile", "{tmp}/afile is not an SQLite database"),
        ("sqlite:///{tmp}", "is a folder; name a file"),
        ("sqlite:///:memory:", "keeps nothing"),
        ("sqlite://", "write sqlite:///relative/mlflow.db or sqlite:////absolute/mlflow.db"),
        ("file:///tmp/mlruns", "MLflow 3 refuses the file store"),
        ("mlruns", "is not a store address; use sqlite:///mlruns/mlflow.db"),
        ("http://127.0.0.1:9", "cannot reach the MLflow server at http://127.0.0.1:9"),
    ],
)
def test_unusable_stores_are_one_line(tmp_path, uri, message, monkeypatch):
    (tmp_path / "afile").write_text("not a database\n")
    probes = []
    real_urlopen = addresses.urllib.request.urlopen
    monkeypatch.setattr(addresses.urllib.request, "urlopen", lambda *a, **k: probes.append(a) or real_urlopen(*a, **k))
    with pytest.raises(FtsweepError) as err:
        Tracker(uri.format(tmp=tmp_path), "x")
    assert message.format(tmp=tmp_path) in str(err.value) and "\n" not in str(err.value)
    assert len(probes) <= 1  # a server is asked once, not retried for minutes


def test_a_server_that_is_not_mlflow_is_one_line(tmp_path):
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(FtsweepError, match=r"answers, but not as an MLflow tracking server \(HTTP 404"):
            Tracker(f"http://127.0.0.1:{server.server_port}", "x")
    finally:
        server.shutdown()


def test_padding_beyond_the_model_is_refused(make_cfg):
    with pytest.raises(ConfigError, match="pads batches to 1000 tokens, beyond tiny-bert's limit of 512"):
        run_cv(make_cfg("trainer.pad_to_multiple_of=1000"))


def test_relative_sqlite_uri_is_relative_to_the_launch_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalize_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert normalize_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert Tracker("sqlite:///sub/mlflow.db", "x").uri == f"sqlite:///{tmp_path}/sub/mlflow.db"
    assert (tmp_path / "sub" / "mlflow.db").exists()


@pytest.mark.parametrize(("rows", "n_folds", "n_bins"), [(2, 2, None), (5, 5, None), (40, 2, 1000)])
def test_stratifying_tiny_data_falls_back_to_fewer_bins(make_cfg, tmp_path, rows, n_folds, n_bins):
    path = tmp_path / "small.csv"
    generate(rows, words_per_passage=8, seed=1).to_csv(path, index=False)
    cfg = make_cfg("data=commonlit", f"data.path={path}", "data.max_rows=null", f"cv.n_folds={n_folds}",
                   f"cv.n_bins={n_bins if n_bins else 'null'}", "trainer.max_steps=2")
    result = run_cv(cfg)
    assert sorted(result.folds) == list(range(n_folds))


def test_disk_full_is_one_line_and_marks_the_runs_failed(make_cfg, monkeypatch, capsys):
    cfg = make_cfg()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Tracker, "log_artifact", full)
    with pytest.raises(SystemExit) as stop:
        run_guarded(lambda: run_cv(cfg), None)
    assert stop.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("ftsweep: error: the disk is full") and "rerun the same command" in line
    client = MlflowClient(cfg.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("ftsweep").experiment_id])
    assert runs and {r.info.status for r in runs} == {"FAILED"}


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A finished tiny CV run with fold models, and a results-table run beside it."""
    from helpers import compose_cfg

    root = tmp_path_factory.mktemp("saved")
    cfg = compose_cfg([*TINY, "trainer.save_models=true", "tracking.experiment=saved"], root)
    result = run_cv(cfg)
    tracker = Tracker(cfg.tracking.uri, "saved")
    write_table(tracker, root / "table")
    table_id = tracker.runs_tagged("ftsweep.kind", "table")[0].info.run_id
    return tracker, result.parent_run_id, table_id, root


def test_predict_refuses_runs_it_cannot_use(saved_run, tmp_path):
    tracker, parent, table_id, root = saved_run
    cfg, paths = fold_checkpoints(tracker, parent, tmp_path / "ok")
    assert len(paths) == 2 and cfg.cv.n_folds == 2
    with pytest.raises(FtsweepError, match="is a results-table run; pass the parent run of a CV run"):
        fold_checkpoints(tracker, table_id, tmp_path / "t")
    child = tracker.runs_tagged("ftsweep.fold", "0")[0].info.run_id
    with pytest.raises(FtsweepError, match=f"is a fold run; pass its parent run id: run_id={parent}"):
        fold_checkpoints(tracker, child, tmp_path / "c")
    tracker.client.set_terminated(parent, "FAILED")  # e.g. it failed in its last step
    try:
        with pytest.raises(FtsweepError, match=r"is FAILED with fold models \[0, 1\] of \[0, 1\]; .*allow_partial=true"):
            fold_checkpoints(tracker, parent, tmp_path / "f")
        assert len(fold_checkpoints(tracker, parent, tmp_path / "p", allow_partial=True)[1]) == 2
    finally:
        tracker.client.set_terminated(parent, "FINISHED")


def test_predict_checks_its_arguments_first(tmp_path):
    base = {"run_id": "abc", "data": {"path": "t.csv"}, "output": str(tmp_path / "sub.csv"), "batch_size": 128,
            "device": "auto", "allow_partial": False}
    assert check_args(OmegaConf.create(base)) == tmp_path / "sub.csv"
    assert not (tmp_path / "sub.csv").exists()  # tried, and removed again
    (tmp_path / "afile").write_text("x\n")
    for changes, message in (({"run_id": "???"}, "run_id is not set; add run_id=<parent run id>"),
                             ({"data": {"path": "???"}}, "data.path is not set"),
                             ({"output": str(tmp_path)}, "is a folder; name a file"),
                             ({"output": str(tmp_path / "no" / "sub.csv")}, "does not exist"),
                             ({"output": str(tmp_path / "afile" / "deeper" / "sub.csv")},
                              f"^output={tmp_path}/afile/deeper/sub.csv: {tmp_path}/afile is a file, not a folder; "
                              "name a file in a folder\\.$"),
                             # as root os.access says yes to /proc; opening the file is the real test
                             ({"output": "/proc/sub.csv"}, r"^output=/proc/sub.csv cannot be written \(.+\); name a "
                                                           r"file in a writable folder\.$"),
                             ({"batch_size": -1}, "batch_size=-1 must be a positive integer"),
                             ({"batch_size": "abc"}, "batch_size='abc' must be a positive integer"),
                             ({"device": "gpu"}, "device='gpu' is not one of auto, cuda, cpu"),
                             ({"allow_partial": "no"}, "allow_partial='no' must be true or false")):
        with pytest.raises(ConfigError, match=message):
            check_args(OmegaConf.create({**base, **changes}))


@pytest.mark.slow
def test_cli_lines_for_missing_values_leave_no_store(tmp_path):
    with at_once() as start:  # commands that each stop at their first line (in this process: helpers.at_once)
        no_path = start(run_cli, "ftsweep", *TINY, "data=commonlit", f"paths.output_root={tmp_path}", cwd=tmp_path)
        bad_clip = start(run_cli, "ftsweep", *TINY, "trainer.grad_clip=-1", f"paths.output_root={tmp_path}", cwd=tmp_path)
        no_run = start(run_cli, "ftsweep.predict", f"paths.output_root={tmp_path}", cwd=tmp_path)
        (tmp_path / "afile").write_text("x\n")
        no_dir = start(run_cli, "ftsweep.predict", "run_id=abc", "data.path=t.csv", f"hydra.run.dir={tmp_path}/afile/p",
                       f"paths.output_root={tmp_path}", cwd=tmp_path)
    out = no_path.result()
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == "ftsweep: error: data=commonlit needs a file: add data.path=/path/to/train.csv"
    out = bad_clip.result()
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == (
        "ftsweep: error: trainer.grad_clip=-1 must be a positive number (or null).")
    assert not (tmp_path / "mlflow.db").exists()  # nothing was created for a run that never started
    out = no_run.result()
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("ftsweep: error: run_id is not set")
    out = no_dir.result()  # a traceback before
    assert (out.returncode, out.stderr.strip().splitlines()) == (2, [
        f"ftsweep: error: hydra.run.dir={tmp_path}/afile/p: {tmp_path}/afile is a file; point hydra.run.dir "
        f"(or paths.output_root) at a writable folder."]), out.stderr[-2000:]


def test_tag_values_with_both_quote_kinds_are_found_exactly(tmp_path):
    """A search summary finds its runs by the study name, the experiment's name by default: `it's "q"`
    cannot be an MLflow filter literal (an FtsweepError traceback after every trial before)."""
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "x")
    values = ['it\'s "q"', 'it_s _q_', 'IT\'S "Q"', 'it\'s "q" too', 'back\\slash\'s "x"', "plain", "o'neil"]
    ids = {value: tracker.start_run(value, {"ftsweep.study": value}) for value in values}
    for value in values:
        assert [r.info.run_id for r in tracker.runs_tagged("ftsweep.study", value)] == [ids[value]], value


def test_a_run_of_listed_folds_is_complete_in_any_order():
    """predict uses the logged model (not the fold checkpoints) when every fold the run trained has weights."""
    from ftsweep.tracking.model_export import FoldModels

    cfg = OmegaConf.create({"cv": {"n_folds": 5, "folds": [2, 0]}})
    assert FoldModels(cfg, {0: ("a", "m0"), 2: ("b", "m2")}).complete
    assert not FoldModels(cfg, {2: ("b", "m2")}).complete
    assert not FoldModels(OmegaConf.create({"cv": {"n_folds": 3, "folds": None}}), {0: ("a", "m"), 1: ("b", "m")}).complete
