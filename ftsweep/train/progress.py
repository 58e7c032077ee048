"""Progress per fold: a live bar on a terminal, plain log lines elsewhere (CI, multirun, files)."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

log = logging.getLogger("ftsweep")


class Progress:
    def __init__(self, fold: int, total_steps: int, use_bar: bool):
        self.fold, self.total = fold, total_steps
        self.bar = tqdm(total=total_steps, desc=f"fold {fold}", leave=True, dynamic_ncols=True) if use_bar else None
        self.done = 0
        self.loss: float | None = None

    def trained(self, step: int, mean_loss: float) -> None:
        self.loss = mean_loss
        if self.bar is not None:
            self.bar.update(step - self.done)
            self.bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
        self.done = step

    def evaluated(self, step: int, rmse: float, best: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.loss:.4f}" if self.loss is not None else "-", rmse=f"{rmse:.4f}",
                                 best=f"{best:.4f}")
        else:
            loss = f"{self.loss:.4f}" if self.loss is not None else "-"
            log.info("fold %d step %d/%d  loss %s  val rmse %.4f  (best %.4f)", self.fold, step, self.total, loss, rmse, best)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def want_bar(multirun: bool) -> bool:
    return not multirun and sys.stderr.isatty()
