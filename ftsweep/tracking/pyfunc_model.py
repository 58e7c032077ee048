"""The CV ensemble as an MLflow pyfunc model: `mlflow.pyfunc.load_model("runs:/<id>/model")`,
`mlflow models predict/serve`, the Model Registry. Input: a frame with a text column
(the run's data.text_column, else `excerpt` or `text`); output: a frame with `target`."""

from __future__ import annotations

import mlflow.models
import mlflow.pyfunc
import pandas as pd
import torch

from ftsweep.errors import DataError

TEXT_COLUMNS = ("excerpt", "text")


class CvEnsembleModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from ftsweep.ensemble.predictor import from_folder

        self.ensemble = from_folder(context.artifacts["ensemble"])
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if cuda else "cpu")
        self.autocast = torch.bfloat16 if cuda else None

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        column = text_column(frame, str(self.ensemble.run_cfg.data.get("text_column", "excerpt")))
        texts = frame[column].astype(str).tolist()
        return pd.DataFrame({"target": self.ensemble.predict(texts, self.device, self.autocast)})


def text_column(frame: pd.DataFrame, configured: str) -> str:
    for name in (configured, *TEXT_COLUMNS):
        if name in frame.columns:
            return name
    raise DataError(f"no text column: expected {configured!r} (or {', '.join(TEXT_COLUMNS)}); got {list(frame.columns)}")


# MLflow "models from code": the model is this file, not a pickle (nothing runs on load but this code).
mlflow.models.set_model(CvEnsembleModel())
