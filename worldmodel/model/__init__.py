"""The world model: sensor-fusion encoder, RSSM dynamics core conditioned on action and dt, Gaussian heads.

Imports torch and numpy only (no zmq, no oni): the runtime, the planner, the exporter and the trainer all build
on this package. See :mod:`worldmodel.model.world_model` for the verbs and their shapes.
"""

from worldmodel.model.config import (
    PRESETS,
    ConfigError,
    ModalitySpec,
    ModelConfig,
    derive,
    model_config,
    model_config_from_dict,
    modalities_from_batch,
)
from worldmodel.model.geometry import integrate_deltas, pose_deltas, relative_poses, unwrap_yaw, wrap_angle
from worldmodel.model.heads import POSE, Gaussian
from worldmodel.model.normalization import compute_normalization, odom_rates, pose_rates, required_keys
from worldmodel.model.rssm import LatentDist, State
from worldmodel.model.world_model import (
    ObserveOutput,
    SequenceOutput,
    Target,
    WorldModel,
    parameter_count,
    relative_trajectory,
)

__all__ = [
    "ConfigError",
    "Gaussian",
    "LatentDist",
    "ModalitySpec",
    "ModelConfig",
    "ObserveOutput",
    "POSE",
    "PRESETS",
    "SequenceOutput",
    "State",
    "Target",
    "WorldModel",
    "compute_normalization",
    "derive",
    "integrate_deltas",
    "model_config",
    "model_config_from_dict",
    "modalities_from_batch",
    "odom_rates",
    "parameter_count",
    "pose_deltas",
    "pose_rates",
    "relative_poses",
    "relative_trajectory",
    "required_keys",
    "unwrap_yaw",
    "wrap_angle",
]
