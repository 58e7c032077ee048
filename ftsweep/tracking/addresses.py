"""A store's address, checked before MLflow touches it: one spelling per store, forms MLflow 3
refuses or that keep nothing named with the form to use, a SQLite file that can be kept (and is
SQLite), a server that answers as MLflow and takes this client's login. Each problem is one line."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from ftsweep.errors import ConfigError, FtsweepError
from ftsweep.files import folder_problem
from ftsweep.locks import sqlite_path

SQLITE_MAGIC = b"SQLite format 3\x00"
REACH_TIMEOUT = 5.0  # seconds: an unreachable server is reported at once, not after minutes of retries
CREDENTIALS = "~/.mlflow/credentials"  # MLflow's client reads a login there (mlflow.utils.credentials)


def normalize_uri(uri: str) -> str:
    """One spelling per store: MLflow's relative `sqlite:///mlflow.db` becomes absolute (relative
    to the launch folder, so every sweep job means the same file); forms MLflow 3 refuses or
    that keep nothing are reported with the form to use."""
    uri = str(uri).strip()
    if not uri:
        raise ConfigError("tracking.uri is empty; use sqlite:///path/to/mlflow.db or http://host:port")
    db = sqlite_path(uri)
    if db is not None:
        if str(db) in ("", ":memory:"):
            raise ConfigError(f"tracking.uri={uri!r} keeps nothing; use sqlite:///path/to/mlflow.db")
        return f"sqlite:///{db.expanduser().absolute()}"
    if uri.startswith("sqlite:"):
        raise ConfigError(f"tracking.uri={uri!r}: write sqlite:///relative/mlflow.db or sqlite:////absolute/mlflow.db")
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    if "://" not in uri and not uri.startswith(("databricks", "file:")):
        where = f"sqlite:///{uri}" if uri.endswith(".db") or Path(uri).is_file() else f"sqlite:///{uri.rstrip('/')}/mlflow.db"
        raise ConfigError(f"tracking.uri={uri!r} is not a store address; use {where} or http://host:port")
    if uri.startswith("file:"):
        raise ConfigError(f"tracking.uri={uri!r}: MLflow 3 refuses the file store; use sqlite:///<folder>/mlflow.db")
    return uri


def check_sqlite_file(db: Path) -> None:
    problem = folder_problem(db.parent)  # creates the folder; the lock file and SQLite's journal go there too
    if problem is not None:
        raise FtsweepError(f"cannot keep the MLflow store in {db.parent} ({problem}); "
                           f"point tracking.uri=sqlite:///... at a writable folder.")
    if db.is_dir():
        raise FtsweepError(f"the MLflow store {db} is a folder; name a file: tracking.uri=sqlite:///{db}/mlflow.db")
    if db.exists() and db.stat().st_size > 0:
        with open(db, "rb") as fh:
            if fh.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                raise FtsweepError(f"{db} is not an SQLite database; point tracking.uri at another file "
                                   f"(or remove it if it is not yours to keep).")


def check_server(uri: str) -> None:
    """One quick request the MLflow REST API answers; a failed connection or a server that is not
    MLflow is reported, and so is a server behind auth (HTTP 401/403) that refuses this client."""
    probe = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        urllib.request.urlopen(probe, timeout=REACH_TIMEOUT).close()
    except urllib.error.HTTPError as exc:
        if exc.code not in (401, 403):
            raise FtsweepError(f"{uri} answers, but not as an MLflow tracking server (HTTP {exc.code} for "
                               f"/api/2.0/mlflow/experiments/search); check tracking.uri / MLFLOW_TRACKING_URI.") from None
        check_login(uri)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FtsweepError(f"cannot reach the MLflow server at {uri} ({reason}); start it "
                           f"(docs/cluster-and-team-server.md) or fix tracking.uri / MLFLOW_TRACKING_URI.") from None


LOGIN = ("put the login in ~/.mlflow/credentials (mode 0600) or set MLFLOW_TRACKING_USERNAME and "
         "MLFLOW_TRACKING_PASSWORD (docs/cluster-and-team-server.md; make cluster-up's: "
         "/var/lib/ftsweep-cluster/secrets/mlflow-credentials)")


def _password_source() -> str:
    """Where MLflow's client took the password from: its variable wins over the credentials file."""
    from mlflow.environment_variables import MLFLOW_TRACKING_PASSWORD

    return MLFLOW_TRACKING_PASSWORD.name if MLFLOW_TRACKING_PASSWORD.get() else os.path.expanduser(CREDENTIALS)


def check_login(uri: str) -> None:
    """The probe again with what MLflow's client would send (MLFLOW_TRACKING_USERNAME/PASSWORD,
    ~/.mlflow/credentials, MLFLOW_TRACKING_TOKEN, an auth plugin): a missing or refused login is
    one line here, not a traceback from the first call that needs it."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    try:
        response = http_request(creds, "/api/2.0/mlflow/experiments/search", "GET", max_retries=0,
                                timeout=REACH_TIMEOUT, raise_on_status=False, params={"max_results": 1})
    except Exception as exc:  # noqa: BLE001 (requests' and MLflow's errors: one line)
        raise FtsweepError(f"cannot reach the MLflow server at {uri} ({str(exc).splitlines()[0][:200]}).") from None
    if response.status_code not in (401, 403):
        return
    if not ((creds.username and creds.password) or creds.token or creds.auth):
        raise FtsweepError(f"the MLflow server at {uri} needs a login (HTTP {response.status_code}); {LOGIN}.")
    who = f"user {creds.username!r}" if creds.username else "this login"
    if response.status_code == 401:
        source = f"; password from {_password_source()}" if creds.password else ""
        raise FtsweepError(f"the MLflow server at {uri} refuses the login of {who} (HTTP 401{source}); {LOGIN}.")
    raise FtsweepError(f"the MLflow server at {uri} does not let {who} read experiments (HTTP 403); "
                       f"ask its admin for a permission (docs/cluster-and-team-server.md).")
