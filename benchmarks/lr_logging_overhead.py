"""How much does logging every layer's learning rate every step add to a fold?

Runs fold 0 of a config with tracking.log_lr=true and =false, alternating,
each into its own SQLite store, and prints the wall times and the overhead.
Also prints the time spent inside the LR-logging calls themselves, which is
the overhead without the run-to-run noise of a shared CPU.

    python benchmarks/lr_logging_overhead.py                      # bundled MiniLM, demo data
    python benchmarks/lr_logging_overhead.py --repeats 1 model=tiny trainer.epochs=1   # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

import ftsweep  # noqa: F401
import ftsweep.tracking.recorder as recorder_module
from ftsweep.cv.pipeline import run_cv
from ftsweep.tracking.sink import FoldSink

CONF = Path(__file__).resolve().parents[1] / "conf"


class TimedSink(FoldSink):
    """FoldSink that adds up the seconds spent on learning-rate metrics."""

    seconds = 0.0

    def log_lr(self, layers, rates, first_step):
        t = time.perf_counter()
        super().log_lr(layers, rates, first_step)
        TimedSink.seconds += time.perf_counter() - t

    def flush(self):
        n_lr = sum(m.key.startswith("lr/") for m in self.buffer)
        share = n_lr / max(1, len(self.buffer))
        t = time.perf_counter()
        super().flush()
        TimedSink.seconds += share * (time.perf_counter() - t)


def one_run(overrides: list[str], log_lr: bool, root: Path) -> tuple[float, float, int]:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "cv.folds=[0]", f"tracking.log_lr={log_lr}",
                                           f"paths.output_root={root}"])
    TimedSink.seconds = 0.0
    t = time.perf_counter()
    result = run_cv(cfg)
    return time.perf_counter() - t, TimedSink.seconds if log_lr else 0.0, result.folds[0].steps


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args, overrides = parser.parse_known_args(argv)
    recorder_module.FoldSink = TimedSink  # the recorder builds one sink per fold from this name
    times = {True: [], False: []}
    direct = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for log_lr in (True, False):
                wall, lr_seconds, steps = one_run(overrides, log_lr, Path(tmp) / f"r{i}{log_lr}")
                times[log_lr].append(wall)
                if log_lr:
                    direct.append(lr_seconds)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"config: {' '.join(overrides) or '(default)'}; fold 0, {steps} steps; repeats {args.repeats}")
    print(f"fold wall time  lr logging on : {on:7.2f} s   {[f'{t:.2f}' for t in times[True]]}")
    print(f"fold wall time  lr logging off: {off:7.2f} s   {[f'{t:.2f}' for t in times[False]]}")
    print(f"overhead (wall, noisy)        : {100 * (on - off) / off:+6.2f} %")
    print(f"time in LR logging calls      : {statistics.median(direct):7.3f} s = {100 * statistics.median(direct) / off:.2f} % of the fold")


if __name__ == "__main__":
    main(sys.argv[1:])
