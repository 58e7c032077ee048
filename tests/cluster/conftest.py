"""The services of `make cluster-up`: a single-node SLURM cluster (with accounting) and an
MLflow server backed by PostgreSQL. Tests here run only through `make test-cluster`; they skip
when the services are not usable, and fail instead under FTSWEEP_REQUIRE_CLUSTER=1 (CI)."""

from __future__ import annotations

import pytest

from .helpers import Cluster, connect


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Cluster:
    return connect(tmp_path_factory.mktemp("home"))
