"""The bundle as an MLflow pyfunc model.

`predict` takes a sessions frame in the data contract's format (one row per client, session and
instrument) and returns one row per client: probabilities, the not-on-track flag state, the signal and
the safety status. The whole bundle is reachable with ``loaded.unwrap_python_model().bundle`` (the
service uses it for full assessments with explanations).
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from features.contract import InvalidDataError, ValidationReport, check_sessions

INPUT_COLUMNS = ("client_id", "session", "instrument", "score")


class OnTrackModel(mlflow.pyfunc.PythonModel):
    def __init__(self, bundle) -> None:
        self.bundle = bundle

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = model_input.copy()
        frame["client_id"] = frame["client_id"].astype("string")
        frame["instrument"] = frame["instrument"].astype("string")
        frame["session"] = pd.to_numeric(frame["session"]).astype("Int64")
        frame["score"] = pd.to_numeric(frame["score"]).astype(float)
        violations = check_sessions(frame)
        if violations:
            raise InvalidDataError(ValidationReport(violations))
        return self.bundle.predict_frame(frame)
