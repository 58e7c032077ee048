"""Multirun sweeps through the real CLI: launchers, the results table, resume after a kill."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from helpers import at_once, cli_env, run_cli

pytestmark = pytest.mark.slow

GRID = ["model=tiny", "cv.n_folds=2", "data.max_rows=64", "trainer.max_steps=4", "optimizer=adamw,llrd"]


def _experiment_runs(uri: str, name: str):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, [r for r in runs if r.data.tags.get("ftsweep.kind") != "table"]


def _check_sweep(root, out, experiment):
    assert out.returncode == 0, out.stderr[-3000:]
    uri = f"sqlite:///{root}/mlflow.db"
    client, runs = _experiment_runs(uri, experiment)
    parents = [r for r in runs if "ftsweep.fold" not in r.data.tags]
    children = [r for r in runs if "ftsweep.fold" in r.data.tags]
    assert len(parents) == 2 and len(children) == 4
    assert {p.data.params["optimizer.name"] for p in parents} == {"adamw", "llrd"}
    assert all(r.info.status == "FINISHED" for r in runs)
    # the table printed at the end of the sweep holds each config's mean over its folds
    for parent in parents:
        folds = [c.data.metrics["rmse_best"] for c in children if c.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        label = parent.data.tags["ftsweep.label"]
        assert label == f"optimizer={parent.data.params['optimizer.name']}"
        assert f"| {label} | 2 | {sum(folds) / 2:.4f} ±" in out.stdout
    return uri, parents


LAUNCHERS = ["basic", "joblib", "submitit_local"]


def _sweep_args(name: str) -> list[str]:
    if name == "seeds":
        return ["-m", *GRID, "trainer.seed=0,1", "tracking.experiment=seeds"]
    return ["-m", *GRID, f"hydra/launcher={name}", *(["hydra.launcher.n_jobs=2"] if name == "joblib" else [])]


class _Sweeps:
    """name -> (its output root, the future of its CompletedProcess): one sweep per launcher and
    the seed sweep, each in a store of its own."""

    def __init__(self, start, tmp_path_factory):
        self._start, self._factory, self._started = start, tmp_path_factory, {}

    def start(self, name: str) -> None:
        root = self._factory.mktemp(name)
        self._started[name] = (root, self._start(run_cli, "ftsweep", *_sweep_args(name), f"paths.output_root={root}",
                                                 cwd=root, timeout=300))

    def __getitem__(self, name: str):
        if name not in self._started:
            self.start(name)
        return self._started[name]


@pytest.fixture(scope="module")
def sweeps(request, tmp_path_factory):
    """The sweeps of the selected tests of this module; each test reads its own one's results. The
    parallel launchers' sweeps (processes of their own) start first, two at a time, and the others
    run in this process meanwhile (helpers.at_once)."""
    names = {item.callspec.params["launcher"] if hasattr(item, "callspec") else "seeds"
             for item in request.session.items
             if getattr(item, "module", None) is request.module and "sweeps" in item.fixturenames}
    with at_once(most=2) as start:
        launched = _Sweeps(start, tmp_path_factory)
        for name in sorted(names, key=lambda name: (name in ("basic", "seeds"), name)):
            launched.start(name)
        yield launched


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_grid_sweep_with_each_launcher(sweeps, launcher):
    root, launched = sweeps[launcher]
    _check_sweep(root, launched.result(),
                 "sweep cv.n_folds=2 data.max_rows=64 model=tiny optimizer=adamw,llrd trainer.max_steps=4")


def test_seed_sweep_and_the_table_command(sweeps):
    root, launched = sweeps["seeds"]
    out = launched.result()
    assert out.returncode == 0, out.stderr[-3000:]
    uri = f"sqlite:///{root}/mlflow.db"
    table_dir = root / "table"
    out = run_cli("ftsweep.table", "--experiment", "seeds", "--tracking-uri", uri, "--out", str(table_dir), cwd=root)
    assert out.returncode == 0, out.stderr
    csv = pd.read_csv(table_dir / "results.csv")
    assert csv["label"].tolist() == ["optimizer=adamw", "optimizer=llrd"]
    assert csv["seeds"].tolist() == [2, 2] and csv["folds"].tolist() == [4, 4] and csv["pairs"].tolist() == [2, 2]
    client, runs = _experiment_runs(uri, "seeds")
    adamw = [r for r in runs if "ftsweep.fold" in r.data.tags and r.data.tags["ftsweep.label"] == "optimizer=adamw"]
    per_seed = pd.DataFrame([(r.data.tags["ftsweep.seed"], r.data.metrics["rmse_best"]) for r in adamw]).groupby(0)[1].mean()
    assert csv.loc[0, "rmse_best"] == pytest.approx(per_seed.mean())
    assert csv.loc[0, "seed_sd"] == pytest.approx(per_seed.std(ddof=1))
    assert (table_dir / "results.md").read_text().count("\n| optimizer=") == 2
    assert (table_dir / "results.png").stat().st_size > 5000
    assert "| optimizer=adamw | 2×2 |" in out.stdout
    table_runs = MlflowClient(uri).search_runs([client.get_experiment_by_name("seeds").experiment_id],
                                               filter_string="tags.`ftsweep.kind` = 'table'")
    assert table_runs and {a.path for a in client.list_artifacts(table_runs[0].info.run_id)} == {
        "results.md", "results.csv", "results.png"}


def test_table_command_errors_are_one_line(tmp_path):
    out = run_cli("ftsweep.table", "--experiment", "nope", "--tracking-uri", f"sqlite:///{tmp_path}/none.db", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == f"ftsweep.table: error: no MLflow store at {tmp_path}/none.db; pass --tracking-uri (sqlite:///... or http://...)."


def _midway(db) -> bool:
    """A fold has FINISHED and a run is open. Read-only SQL: an MLflow client here would run
    schema checks of its own and race the sweep's creation of the store."""
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            finished = con.execute("SELECT count(*) FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid "
                                   "WHERE r.status = 'FINISHED' AND t.key = 'ftsweep.fold'").fetchone()[0]
            running = con.execute("SELECT count(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet, or a writer holds the lock
        return False
    return finished > 0 and running > 0


def test_killed_sweep_resumes_to_one_finished_run_per_unit(tmp_path):
    args = ["-m", "model=tiny", "cv.n_folds=2", "data.max_rows=400", "trainer.epochs=6", "optimizer=adamw,llrd",
            "tracking.experiment=resume", f"paths.output_root={tmp_path}"]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = cli_env()
    proc = subprocess.Popen([sys.executable, "-m", "ftsweep", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    midway = False
    while time.time() < deadline and not midway and proc.poll() is None:
        time.sleep(0.3)
        midway = _midway(tmp_path / "mlflow.db")
    if not midway:
        proc.kill()
        pytest.fail(f"no fold finished in time; the sweep printed:\n{proc.communicate()[0][-3000:]}")
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=180)[0]  # it closes its runs and ends in seconds; a bound for a loaded box
    assert proc.returncode != 0, output
    _, runs = _experiment_runs(uri, "resume")
    assert "KILLED" in {r.info.status for r in runs}
    assert len([r for r in runs if r.info.status == "FINISHED" and "ftsweep.fold" in r.data.tags]) < 4
    (killed,) = [r.info.run_id for r in runs if "ftsweep.fold" not in r.data.tags and r.info.status == "KILLED"]
    kept = sorted(int(r.data.tags["ftsweep.fold"]) for r in runs if r.info.status == "FINISHED"
                  and r.data.tags.get("mlflow.parentRunId") == killed)
    n_done = len([r for r in runs if "ftsweep.fold" not in r.data.tags and r.info.status == "FINISHED"])

    rerun = run_cli("ftsweep", *args, cwd=tmp_path, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _, runs = _experiment_runs(uri, "resume")
    units = [(r.data.tags["ftsweep.config_key"], r.data.tags["ftsweep.fold"]) for r in runs
             if r.info.status == "FINISHED" and "ftsweep.fold" in r.data.tags]
    assert len(units) == len(set(units)) == 4
    parents = [r for r in runs if "ftsweep.fold" not in r.data.tags]
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}  # the killed parent was reopened
    # the killed config is reopened with the folds it had finished; a config finished before the kill is left
    said = rerun.stderr + rerun.stdout
    assert re.findall(r"resuming MLflow run (\w+): folds (\[[\d, ]*\]) already finished", said) == [(killed, str(kept))]
    assert said.count("already finished in run") == n_done
    # a third run has nothing left to do
    third = run_cli("ftsweep", *args, cwd=tmp_path, timeout=300)
    assert (third.stderr + third.stdout).count("already finished") == 2


def _group_alive(pgid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=,cmd=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def test_killing_a_joblib_driver_ends_its_workers_and_their_runs(tmp_path):
    args = ["-m", "model=tiny", "cv.n_folds=2", "data.max_rows=400", "trainer.epochs=6", "optimizer=adamw,llrd",
            "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "tracking.experiment=orphans", f"paths.output_root={tmp_path}"]
    env = cli_env()
    proc = subprocess.Popen([sys.executable, "-m", "ftsweep", *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and not _midway(tmp_path / "mlflow.db"):
        time.sleep(0.3)
    assert len(_group_alive(proc.pid)) >= 3  # the driver, its loky workers and resource trackers
    proc.kill()  # kill -9 of the driver: nothing of it can clean up
    proc.wait()
    deadline = time.time() + 180  # ends when the group is gone; the bound is for a loaded 2-core box
    while time.time() < deadline and _group_alive(proc.pid):
        time.sleep(1)
    left = _group_alive(proc.pid)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    assert not left, left
    _, runs = _experiment_runs(f"sqlite:///{tmp_path}/mlflow.db", "orphans")
    assert "RUNNING" not in {r.info.status for r in runs}  # the workers marked their open runs KILLED
    assert "KILLED" in {r.info.status for r in runs}


_DEAD_WORKER = ("ftsweep: error: a job's process died (SIGKILL, often the out-of-memory killer) under the joblib "
                "launcher, and the sweep stopped there; finished jobs keep their runs in MLflow experiment 'stop'. "
                "Rerun the same command to run the rest (finished folds are reused); if memory ran out, lower "
                "hydra.launcher.n_jobs or trainer.batch_size.")
_TERMINATED_WORKER = ("ftsweep: error: a job's process died (SIGTERM) under the joblib launcher, and the sweep "
                      "stopped there; finished jobs keep their runs in MLflow experiment 'stop'. Rerun the same "
                      "command to run the rest (finished folds are reused); its log says why (the job folder under "
                      "hydra.sweep.dir).")
_INTERRUPTED = ("ftsweep: interrupted; finished jobs keep their runs in MLflow experiment 'stop'. Rerun the same "
                "command to run the rest (finished folds are reused).")
_SEARCH_INTERRUPTED = ("ftsweep: interrupted; the running trials are retried by the next run of this command (their "
                       "finished folds are kept).")
_GRID = ["optimizer=adamw,llrd"]
_SEARCH = ["+sweep=search_llrd", "reinit.n=range(0, 3)", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2"]


@pytest.mark.parametrize(("sweep", "stop", "code", "last_line"), [
    pytest.param(_GRID, "kill -9 a worker", 1, _DEAD_WORKER, id="grid-kill-9"),
    pytest.param(_GRID, "SIGTERM a worker", 1, _TERMINATED_WORKER, id="grid-term-a-worker"),
    # the second Ctrl-C lands while the first one's clean-up runs (or just after): still one line
    pytest.param(_GRID, "Ctrl-C twice", 130, _INTERRUPTED, id="grid-ctrl-c-twice"),
    # the driver leaves at once; its workers close their runs
    pytest.param(_SEARCH, "Ctrl-C", 130, _SEARCH_INTERRUPTED, id="search-ctrl-c"),
])
def test_a_stopped_joblib_sweep_is_one_line_and_keeps_what_finished(tmp_path, sweep, stop, code, last_line):
    """kill -9 of one job's process (what the out-of-memory killer does), or Ctrl-C (SIGINT to the
    whole process group, as a terminal sends it): each was ~40 lines of traceback (joblib's, or an
    idle worker's), and the runs that joblib's SIGKILL of its other workers left open stayed
    RUNNING. Now one line, finished folds kept, nothing left RUNNING, no process left."""
    args = ["-m", "model=tiny", "cv.n_folds=2", "data.max_rows=400", "trainer.epochs=6", *sweep,
            "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "tracking.experiment=stop", f"paths.output_root={tmp_path}"]
    proc = subprocess.Popen([sys.executable, "-m", "ftsweep", *args], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not _midway(tmp_path / "mlflow.db"):
            time.sleep(0.3)
        _, runs = _experiment_runs(f"sqlite:///{tmp_path}/mlflow.db", "stop")
        finished = {r.info.run_id for r in runs if r.info.status == "FINISHED"}
        if stop.startswith("Ctrl-C"):
            os.killpg(proc.pid, signal.SIGINT)
            if stop == "Ctrl-C twice":
                time.sleep(0.2)
                os.killpg(proc.pid, signal.SIGINT)
        else:
            workers = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "LokyProcess"], capture_output=True,
                                     text=True).stdout.split()
            assert workers, "no joblib worker found"
            os.kill(int(workers[0]), signal.SIGKILL if stop == "kill -9 a worker" else signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
        # a search's workers close their runs after their driver has left (the orphan watch: 1 s polls, then
        # up to 20 s of grace); the wait ends when the group is gone, its bound is for a loaded 2-core box
        deadline = time.time() + 180
        while time.time() < deadline and _group_alive(proc.pid):
            time.sleep(0.5)
        left = _group_alive(proc.pid)
    finally:
        if proc.poll() is None or _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code and "Traceback" not in err and "resource_tracker" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == last_line
    assert not left, left
    _, runs = _experiment_runs(f"sqlite:///{tmp_path}/mlflow.db", "stop")
    status = {r.info.run_id: r.info.status for r in runs}
    assert finished and all(status[run_id] == "FINISHED" for run_id in finished)
    assert "RUNNING" not in status.values() and "KILLED" in status.values()
