"""MLflow's own system metrics on a fold run: CPU and memory (and disk, network), and GPU
utilisation and memory where NVML answers, sampled on a thread every `interval` seconds as
`system/...` metrics (tracking.system_metrics_interval; null turns them off). A fold shorter than one
interval still gets the sample taken when it started, logged when it ends."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger("ftsweep")


@contextlib.contextmanager
def sampled(run_id: str, tracking_uri: str, interval: float | None) -> Iterator[None]:
    if not interval:
        yield
        return
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as exc:  # psutil missing (a dependency of ftsweep, not of mlflow-skinny): no samples
        log.warning("no system metrics on run %s (%s); pip install psutil", run_id, exc)
        yield
        return

    quiet = logging.getLogger("mlflow.system_metrics")
    level, quiet.level = quiet.level, logging.WARNING  # its start/stop notes would sit between ftsweep's lines
    monitor = SystemMetricsMonitor(run_id, sampling_interval=float(interval), samples_before_logging=1,
                                   tracking_uri=tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        _finish(monitor)
        quiet.level = level


def _finish(monitor) -> None:
    """Stop the sampling thread; if it never logged (a short fold), log what it sampled. A store that
    refuses now (a locked SQLite file past its retries, a server gone) costs the samples, not the fold."""
    monitor._shutdown_event.set()  # MLflow's finish() would join and flush only: no sample for a short fold
    if monitor._process is not None:
        monitor._process.join()
    try:
        if monitor._logging_step == 0:
            monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
    except Exception as exc:  # noqa: BLE001
        log.warning("system metrics of run %s not logged: %s", monitor._run_id, str(exc).splitlines()[0][:200])
