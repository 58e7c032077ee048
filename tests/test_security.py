"""What a run's artifacts, a server behind auth and printed commands can make ftsweep do: a
tampered logged model runs no code in ftsweep.predict, a refused login is one line, printed
commands survive the shell, and stopping `python -m ftsweep.ui` stops the server it started."""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow.pyfunc import load_model

from ftsweep.cv.pipeline import run_cv
from ftsweep.cv.summary import print_summary
from ftsweep.data.demo import generate
from ftsweep.ensemble.predict import predict_csv
from ftsweep.errors import DataError, FtsweepError
from ftsweep.sweep.callback import SweepCallback
from ftsweep.tracking.store import Tracker

from helpers import CONF, TINY, cli_env, compose_cfg, free_port, wait_for_server

# A name a shell would split, expand or end early if printed unquoted.
EXPERIMENT = "Bob's sweep $HOME"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished 2-fold tiny run with its MLflow model, under a folder whose name has a space."""
    root = tmp_path_factory.mktemp("security") / "my runs"
    cfg = compose_cfg([*TINY, "trainer.save_models=true", f'tracking.experiment="{EXPERIMENT}"'], root)
    result = run_cv(cfg)
    test = generate(6, words_per_passage=12, seed=3)[["id", "excerpt"]]
    test.to_csv(root / "test.csv", index=False)
    return cfg, result, root


@pytest.fixture
def own_sys_path(monkeypatch):
    """load_model puts the model's code/ first on sys.path for good (MLflow); a later spawned
    process would import ftsweep from there. Undone after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def _predict(cfg, result, root: Path) -> np.ndarray:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        predict_cfg = compose("predict", overrides=[f"run_id={result.parent_run_id}", f"data.path={root / 'test.csv'}",
                                                    f"tracking.uri={cfg.tracking.uri}", f"paths.output_root={root}"])
    submission, n_models = predict_csv(predict_cfg)
    assert n_models == 2
    return submission["target"].to_numpy()


@contextlib.contextmanager
def _tampered(model_dir: Path, marker: Path):
    """Every Python file of the logged model (its models-from-code file and code/ftsweep) first
    touches `marker`; the ensemble's HF config and tokenizer name custom code (auto_map) that
    would too. Restored on exit."""
    saved = {p: p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    payload = f"import pathlib; pathlib.Path({str(marker)!r}).touch()\n"
    try:
        python_files = [p for p in saved if p.suffix == ".py"]
        assert model_dir / "pyfunc_model.py" in python_files and len(python_files) > 20
        for path in python_files:
            future = "from __future__ import annotations\n"
            text = path.read_text()
            path.write_text(text.replace(future, future + payload, 1) if future in text else payload + text)
        ensemble = model_dir / "artifacts" / "ensemble"
        for folder, key in (("backbone", "AutoConfig"), ("tokenizer", "AutoTokenizer")):
            (ensemble / folder / "evil.py").write_text(payload + "class Evil:\n    pass\n")
            config = ensemble / folder / ("config.json" if folder == "backbone" else "tokenizer_config.json")
            text = config.read_text().rstrip()
            assert text.endswith("}")
            config.write_text(text[:-1].rstrip() + f',\n  "auto_map": {{"{key}": "evil.Evil"}}\n}}\n')
        yield
    finally:
        for path in model_dir.rglob("evil.py"):
            path.unlink()
        for path, data in saved.items():
            path.write_bytes(data)


@pytest.mark.slow
def test_predict_runs_no_code_from_the_artifacts(trained, tmp_path, monkeypatch, own_sys_path):
    cfg, result, root = trained
    before = _predict(cfg, result, root)
    # from here on predict must take the model's ensemble folder: the fold checkpoints, its
    # fallback for runs without a model, would predict the same numbers and hide a broken download
    monkeypatch.setattr("ftsweep.ensemble.predict.from_run", lambda *a: pytest.fail("predict fell back to from_run"))
    np.testing.assert_allclose(_predict(cfg, result, root), before, rtol=0, atol=1e-6)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking.uri)  # for load_model below
    (model_dir,) = {p.parent for p in (root / "artifacts").rglob("MLmodel")}
    marker = tmp_path / "ran-artifact-code"
    with _tampered(model_dir, marker):
        after = _predict(cfg, result, root)
        assert not marker.exists(), "ftsweep.predict imported code from the run's artifacts"
        np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)
        # the logged model itself does run its code: that is MLflow's contract (docs: trust boundary)
        load_model(f"runs:/{result.parent_run_id}/model")
        assert marker.exists()


@pytest.mark.slow
def test_the_pyfunc_model_takes_empty_text_and_missing_input(trained, monkeypatch, own_sys_path):
    cfg, result, _ = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking.uri)
    model = load_model(f"runs:/{result.parent_run_id}/model")
    texts = ["A short passage about rivers.", "Another one, about the sea and its tides."]
    by_excerpt = model.predict(pd.DataFrame({"excerpt": texts}))
    assert list(by_excerpt.columns) == ["target"] and len(by_excerpt) == 2
    # `text`, which the model documents as accepted, passes its signature and gives the same numbers
    by_text = model.predict(pd.DataFrame({"text": texts}))
    np.testing.assert_allclose(by_text["target"], by_excerpt["target"], rtol=0, atol=1e-6)
    empty = model.predict(pd.DataFrame({"excerpt": pd.Series([], dtype=str)}))
    assert list(empty.columns) == ["target"] and len(empty) == 0 and empty["target"].dtype == np.float64
    with pytest.raises(DataError, match=r"^column 'excerpt' has no text in row\(s\) 1, 3; fill or drop those rows\.$"):
        model.predict(pd.DataFrame({"excerpt": [texts[0], None, texts[1], np.nan]}))
    with pytest.raises(DataError, match=r"^no text column: the input needs a column named 'excerpt' or 'text'\.$"):
        model.predict(pd.DataFrame({"body": texts}))


@pytest.mark.slow
def test_printed_commands_survive_the_shell(trained, tmp_path, capsys):
    cfg, result, root = trained
    SweepCallback._print_table(cfg, EXPERIMENT, tmp_path)
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("Again later: ")]
    uri = f"sqlite:///{root}/mlflow.db"
    assert shlex.split(line.removeprefix("Again later: ")) == [
        "python", "-m", "ftsweep.table", "--experiment", EXPERIMENT, "--tracking-uri", uri]
    print_summary(cfg, result)
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "python -m ftsweep.ui" in x]
    command = line[line.index("python -m"):line.rindex(")")]
    assert shlex.split(command) == ["python", "-m", "ftsweep.ui", "--tracking-uri", uri]


class _BasicAuth(http.server.BaseHTTPRequestHandler):
    """An MLflow-like server behind basic auth: alice/secret may read, bob/secret may not."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        header = self.headers.get("Authorization", "")
        user = base64.b64decode(header.removeprefix("Basic ")).decode() if header.startswith("Basic ") else ""
        code = {"alice:secret": 200, "bob:secret": 403}.get(user, 401)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"experiments": []}' if code == 200 else b'{"error_code": "PERMISSION_DENIED"}')

    def log_message(self, *args):
        pass


def _credentials(user: str, password: str) -> dict[str, str]:
    """A login in MLflow's credentials file (~/.mlflow/credentials) instead of its variables."""
    return {"file": f"[mlflow]\nmlflow_tracking_username = {user}\nmlflow_tracking_password = {password}\n"}


@pytest.mark.parametrize(("login", "message"), [
    ({}, "needs a login (HTTP 401); put the login in ~/.mlflow/credentials (mode 0600) or set "
         "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
    ({"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "wrong"},
     "refuses the login of user 'alice' (HTTP 401; password from MLFLOW_TRACKING_PASSWORD); put the login in"),
    (_credentials("alice", "wrong"), "refuses the login of user 'alice' (HTTP 401; password from {home}/.mlflow/credentials)"),
    ({"MLFLOW_TRACKING_USERNAME": "bob", "MLFLOW_TRACKING_PASSWORD": "secret"},
     "does not let user 'bob' read experiments (HTTP 403)"),
    ({"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "secret"}, None),
    (_credentials("alice", "secret"), None),
])
def test_a_server_behind_auth_refuses_in_one_line(monkeypatch, tmp_path, login, message):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials of this machine's user
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_AUTH"):
        monkeypatch.delenv(name, raising=False)
    login = dict(login)
    if "file" in login:
        (tmp_path / ".mlflow").mkdir()
        (tmp_path / ".mlflow/credentials").write_text(login.pop("file"))
    for name, value in login.items():
        monkeypatch.setenv(name, value)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BasicAuth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        if message is None:
            assert Tracker(uri, None).uri == uri
        else:
            with pytest.raises(FtsweepError) as caught:
                Tracker(uri, None)
            assert str(caught.value).startswith(f"the MLflow server at {uri} ")
            assert message.format(home=tmp_path) in str(caught.value) and "\n" not in str(caught.value)
    finally:
        server.shutdown()
        server.server_close()


def _descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _start_ui(folder: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "ftsweep.ui", "--tracking-uri", f"sqlite:///{folder}/mlflow.db",
                           "--port", str(port)], cwd=folder, env=cli_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    return ui, port


@pytest.mark.slow
def test_stopping_the_ui_stops_its_server(tmp_path):
    """`kill <pid>` (SIGTERM), a closed terminal (SIGHUP) and `kill -9` of `python -m ftsweep.ui`:
    no process of the server's group is left and the port is free. Three UIs at once. The wait ends
    when the last process is gone; its bound (120 s) only catches a server that never ends: 15 s
    failed on a 2-core box whose two xdist workers were busy."""
    Tracker(f"sqlite:///{tmp_path}/mlflow.db", "x")  # the UI serves an existing store (it refuses a missing one)
    uis = {sig: _start_ui(tmp_path) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGKILL)}
    groups = {sig: {ui.pid} for sig, (ui, _) in uis.items()}
    try:
        for sig, (ui, port) in uis.items():
            assert wait_for_server(f"http://127.0.0.1:{port}", 120), f"the UI on port {port} never answered"
            server = _descendants(ui.pid)
            assert server, "the UI started no server"
            for pid in server:
                with contextlib.suppress(ProcessLookupError):
                    groups[sig].add(os.getpgid(pid))
        for sig, (ui, _) in uis.items():
            ui.send_signal(sig)  # the ui's pid only, as `kill <pid>` does
        deadline = time.time() + 120
        for ui, _ in uis.values():
            ui.wait(timeout=max(deadline - time.time(), 1))
        while any(_group_alive(g) for gs in groups.values() for g in gs) and time.time() < deadline:
            time.sleep(0.2)
        left = {sig.name: [g for g in gs if _group_alive(g)] for sig, gs in groups.items()}
        assert left == {"SIGTERM": [], "SIGHUP": [], "SIGKILL": []}, "processes of the UI outlived its end"
        for _, port in uis.values():
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no listener
                s.bind(("127.0.0.1", port))  # nothing listens on the port any more
    finally:
        for group in set().union(*groups.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        for ui, _ in uis.values():
            ui.wait(timeout=120)  # a bound for a loaded box, not a wait: SIGKILL ends it at once
