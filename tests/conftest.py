"""Shared test settings: small thread counts, a hypothesis profile that fits CI."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

os.environ.setdefault("OMP_NUM_THREADS", "1")

settings.register_profile(
    "pouw",
    deadline=None,
    max_examples=int(os.environ.get("POUW_HYPOTHESIS_EXAMPLES", "100")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("pouw")
