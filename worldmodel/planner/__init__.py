"""Sampling MPC in latent space: MPPI or CEM over action sequences, scored on the world model's decoded predictions.

numpy only (no torch, no oni): the predictions come from a ``rollout`` callable (a backend imagining from the belief,
or any other predictor). See :mod:`worldmodel.planner.mppi` for the planner, :mod:`worldmodel.planner.cost` for the
task cost and :mod:`worldmodel.planner.config` for the settings.
"""

from worldmodel.planner.config import (
    METHODS,
    CostWeights,
    PlannerConfig,
    PlannerConfigError,
    RobotGeometry,
    planner_config_from_dict,
)
from worldmodel.planner.cost import TERMS, NavigationCost, normal_cdf, safe_ranges
from worldmodel.planner.mppi import PlanPredictions, PlanResult, Predictions, Rollout, SamplingPlanner

__all__ = [
    "METHODS",
    "TERMS",
    "CostWeights",
    "NavigationCost",
    "PlanPredictions",
    "PlanResult",
    "PlannerConfig",
    "PlannerConfigError",
    "Predictions",
    "RobotGeometry",
    "Rollout",
    "SamplingPlanner",
    "normal_cdf",
    "planner_config_from_dict",
    "safe_ranges",
]
