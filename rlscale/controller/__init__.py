"""The inference wrapper: control loop, guard rails, HTTP API, Prometheus metrics, audit log (DESIGN.md section 9).

Imports no torch and no stable-baselines3: a served policy is numpy arrays
from ``policy.npz`` and a JSON card.
"""

from rlscale.controller.audit import AuditLog
from rlscale.controller.decision import Decider, Decision
from rlscale.controller.guards import GuardConfig, GuardState, apply_guards, assess
from rlscale.controller.loop import ControlLoop
from rlscale.controller.telemetry import Telemetry

__all__ = ["AuditLog", "ControlLoop", "Decider", "Decision", "GuardConfig", "GuardState", "Telemetry", "apply_guards", "assess"]
