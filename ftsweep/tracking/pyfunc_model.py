"""The CV ensemble as an MLflow pyfunc model: `mlflow.pyfunc.load_model("runs:/<id>/model")`,
`mlflow models predict/serve`, the Model Registry. Input: a frame with a text column (the run's
data.text_column, else `excerpt` or `text`); output: a frame with `target`, one row per input row
(none for none). A missing text (None, NaN) is refused with the rows it is in."""

from __future__ import annotations

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.types.schema import ColSpec, Schema

from ftsweep.errors import DataError

TEXT_COLUMNS = ("excerpt", "text")


class CvEnsembleModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from ftsweep.model.ensemble import from_folder

        self.ensemble = from_folder(context.artifacts["ensemble"])
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if cuda else "cpu")
        self.autocast = torch.bfloat16 if cuda else None

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        column = text_column(frame, str(self.ensemble.run_cfg.data.get("text_column", "excerpt")))
        texts = checked_texts(frame[column])
        return pd.DataFrame({"target": np.asarray(self.ensemble.predict(texts, self.device, self.autocast), dtype=float)})


def input_schema(configured: str) -> Schema:
    """Every column name the model takes, each optional: MLflow's signature check refuses a frame
    that lacks a required column, and a frame needs only one of these (text_column picks it)."""
    return Schema([ColSpec("string", name, required=False) for name in dict.fromkeys((configured, *TEXT_COLUMNS))])


def text_column(frame: pd.DataFrame, configured: str) -> str:
    names = list(dict.fromkeys((configured, *TEXT_COLUMNS)))
    for name in names:
        if name in frame.columns:
            return name
    # MLflow's signature check has already dropped the columns it does not declare
    raise DataError(f"no text column: the input needs a column named {' or '.join(map(repr, names))}.")


def checked_texts(column: pd.Series) -> list[str]:
    """The column as strings; a missing value (None, NaN) is refused, naming its rows (frame index)."""
    missing = column.isna().to_numpy()
    if missing.any():
        rows = column.index[missing].tolist()
        shown = ", ".join(map(str, rows[:10])) + (f", ... ({len(rows)} in all)" if len(rows) > 10 else "")
        raise DataError(f"column {column.name!r} has no text in row(s) {shown}; fill or drop those rows.")
    return column.astype(str).tolist()


# MLflow "models from code": the model is this file, not a pickle (nothing runs on load but this code).
mlflow.models.set_model(CvEnsembleModel())
