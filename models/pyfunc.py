"""The bundle as an MLflow pyfunc model: a true second way to serve it.

`predict` takes a sessions table in the data contract's format (one row per client, session and
instrument, with the optional columns the service takes too: ``date``, ``clinic_id``,
``therapist_id`` and the item answers ``item_1`` ... ``item_n``, so a risk item raises the
safety flag here as it does in the service). It is read and checked by the contract's file
rules (`features.contract.validate_frames`: types and content, every problem named with its
row, column and rule), assessed by the one assessment (`Bundle.assess`), and returned one row
per client: probabilities, the not-on-track flag, the signal and the safety status. With the
parameter ``output="assessment"`` each row also carries the whole assessment (drivers,
suggestions, course, safety wording) as JSON, the same object ``POST /v1/assess`` returns.

Parameters (declared in the signature): ``output`` ("summary" | "assessment"), ``horizon``
(sessions ahead in the expected course), ``budget`` (a clinic's flag budget; 0 = the
bundle's), ``alliance_after`` (the assessment is made after the latest alliance rating).
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd

from features.contract import (
    MAX_ITEMS,
    SESSION_OPTIONAL,
    SESSION_REQUIRED,
    InvalidDataError,
    validate_frames,
)

INPUT_COLUMNS = SESSION_REQUIRED
OPTIONAL_COLUMNS = (*SESSION_OPTIONAL, *(f"item_{k}" for k in range(1, MAX_ITEMS + 1)))
PARAMS = {"output": "summary", "horizon": 4, "budget": 0.0, "alliance_after": False}


def summary_frame(assessments: list) -> pd.DataFrame:
    """One row per assessment: the tabular fields of the pyfunc output."""
    rows = []
    for a in assessments:
        risk = a.risk
        rows.append({
            "client_id": a.client_id,
            "instrument": a.instrument,
            "p_failure": np.nan if risk is None else risk.p_failure,
            "p_dropout": np.nan if risk is None or risk.p_dropout is None else risk.p_dropout,
            "flag_state": a.flag.state,
            "flagged": bool(a.flag.flagged),
            "signal": a.signal.colour,
            "safety": a.safety.status,
        })
    return pd.DataFrame(rows, columns=["client_id", "instrument", "p_failure", "p_dropout",
                                       "flag_state", "flagged", "signal", "safety"])


def signature(output_example: pd.DataFrame):
    """Input: the contract's required columns, its optional ones marked optional (MLflow drops
    undeclared columns, so every one the assessment reads is declared); output from an
    example; the parameters with their defaults."""
    from mlflow.models import infer_signature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    kinds = {"client_id": "string", "session": "long", "instrument": "string",
             "score": "double", "date": "datetime", "clinic_id": "string",
             "therapist_id": "string"}
    cols = [ColSpec(kinds[c], c) for c in INPUT_COLUMNS]
    cols += [ColSpec(kinds.get(c, "double"), c, required=False) for c in OPTIONAL_COLUMNS]
    out = infer_signature(output_example).inputs  # the output frame's schema
    params = ParamSchema([ParamSpec("output", "string", PARAMS["output"]),
                          ParamSpec("horizon", "long", PARAMS["horizon"]),
                          ParamSpec("budget", "double", PARAMS["budget"]),
                          ParamSpec("alliance_after", "boolean", PARAMS["alliance_after"])])
    from mlflow.models import ModelSignature

    return ModelSignature(inputs=Schema(cols), outputs=out, params=params)


class OnTrackModel(mlflow.pyfunc.PythonModel):
    def __init__(self, bundle) -> None:
        self.bundle = bundle

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        p = {**PARAMS, **(params or {})}
        if p["output"] not in {"summary", "assessment"}:
            raise ValueError(f"params.output must be 'summary' or 'assessment', not "
                             f"{p['output']!r}")
        cohort, report = validate_frames(pd.DataFrame(model_input))
        if not report.ok:
            raise InvalidDataError(report)
        budget = float(p["budget"]) or None
        assessments = self.bundle.assess(cohort.sessions, horizon=int(p["horizon"]),
                                         budget=budget,
                                         alliance_after=bool(p["alliance_after"]))
        out = summary_frame(assessments)
        if p["output"] == "assessment":
            out["assessment"] = [a.model_dump_json() for a in assessments]
        return out
