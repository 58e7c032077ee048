"""What a CV run of one config returns: the folds it holds (trained here or read back), the OOF
score, where it is logged, and whether it was held, pruned or could not register its model."""

from __future__ import annotations

from dataclasses import dataclass, field

from ftsweep.tracking.aggregate import Closing, Unclaimed
from ftsweep.train.loop import FoldResult, fold_mean, fold_std


@dataclass
class CvResult:
    """One config's CV as this job saw it: the folds it ran (trained, or finished already), the OOF
    score, the CV over every fold of the config (`cv`, the parent's values; None while folds are
    missing), how many are finished, where it is logged, and how the job ended."""

    parent_run_id: str | None
    folds: dict[int, FoldResult] = field(default_factory=dict)
    rmse_oof: float = float("nan")  # every fold's when `cv` is there, else this job's folds' (not logged)
    cv: dict[str, float] | None = None
    finished: str = ""  # "2 of 3": the config's folds finished when this job left
    tracking_uri: str = ""
    link: str = ""  # the experiment's runs in the MLflow UI
    held_by: str | None = None  # another live process is running this unit: nothing was run here
    pruned_at: int | None = None  # a search's pruner stopped the run after this fold
    registry_error: str | None = None  # the run FINISHED, but tracking.register_as failed (how to retry it)

    def mean(self, attr: str = "rmse_best") -> float:
        return fold_mean(self.folds, attr)

    def std(self, attr: str = "rmse_best") -> float:
        return fold_std(self.folds, attr)

    def closed(self, closing: Closing) -> None:
        """How the job left its unit (RunRecorder.finish)."""
        self.rmse_oof, self.cv, self.finished = closing.rmse_oof, closing.cv, closing.finished
        self.registry_error = closing.registry_error

    @classmethod
    def unclaimed(cls, unit: Unclaimed, tracking_uri: str, link: str) -> CvResult:
        """What the store already holds for a unit this process did not run."""
        return cls(unit.parent_id, dict(unit.folds), unit.rmse_oof, unit.cv, unit.finished, tracking_uri, link,
                   held_by=unit.held_by)
