"""The cluster model, vectorised over N clusters (see DESIGN.md section 3)."""

from rlscale.sim.params import SimParams, build_params
from rlscale.sim.simulator import Simulator, StepResult

__all__ = ["SimParams", "Simulator", "StepResult", "build_params"]
