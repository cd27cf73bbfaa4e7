"""The benchmark's peer: a plain BentoML service around the same booster, nothing else.

`POST /predict` takes one model-input row (`{"row": [...]}`, the not-on-track risk model's transformed
features) and returns the booster's probability and its TreeSHAP contributions
(`pred_contrib`). It is what an explained prediction costs with no assessment around it:
`benchmarks/bench_service.py` compares `/v1/assess` of the real service with it. The booster
comes from the registered model named by ONTRACK_TRACKING_URI and ONTRACK_MODEL_VERSION (the
service's settings); not part of the product.
"""

from __future__ import annotations

import bentoml
import numpy as np
from pydantic import BaseModel


class PeerIn(BaseModel):
    row: list[float | None]


@bentoml.service(name="peer", workers=1)
class Peer:
    def __init__(self) -> None:
        from serving.loader import load
        from serving.settings import ServingSettings

        bundle = load(ServingSettings()).bundle
        self.booster = next(iter(bundle.models.values())).failure.booster_

    @bentoml.api(route="/predict", input_spec=PeerIn)
    def predict(self, row: list[float | None]) -> dict:
        x = np.array([[np.nan if v is None else v for v in row]], dtype=float)
        phi = self.booster.predict(x, pred_contrib=True, num_threads=1)[0]
        logit = float(phi.sum())
        return {"p": 1.0 / (1.0 + np.exp(-logit)), "contributions": phi.tolist()}
