"""When the cluster is down its tests skip for a developer, and fail where CI requires them
(FTSWEEP_REQUIRE_CLUSTER=1, set by .ci/run): a dead slurmd must not make CI green."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ROOT, cli_env, cluster_unusable


def test_an_unusable_cluster_skips_without_the_variable(monkeypatch):
    monkeypatch.delenv("FTSWEEP_REQUIRE_CLUSTER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="^slurmd is down$"):
        cluster_unusable("slurmd is down")


def test_an_unusable_cluster_fails_when_required(monkeypatch):
    monkeypatch.setenv("FTSWEEP_REQUIRE_CLUSTER", "1")
    with pytest.raises(pytest.fail.Exception, match=r"^slurmd is down \(FTSWEEP_REQUIRE_CLUSTER=1: "):
        cluster_unusable("slurmd is down")


@pytest.mark.slow
def test_the_cluster_fixture_fails_when_required(tmp_path):
    """The real cluster tests, as .ci/run starts them, with no cluster.env (an empty state folder)."""
    env = cli_env({"FTSWEEP_CLUSTER_STATE": str(tmp_path), "FTSWEEP_REQUIRE_CLUSTER": "1"})
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cluster",
                          "tests/cluster/test_server.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout[-2000:]
    assert "2 errors" in out.stdout and "skipped" not in out.stdout, out.stdout[-2000:]
    assert f"the cluster is not up ({tmp_path}/cluster.env missing)" in out.stdout, out.stdout[-2000:]
