"""Planar pose algebra shared by the pose head, the losses and the evaluation: (x, y, yaw) in metres and radians.

A *delta* is a motion expressed in the frame of the pose it starts from: ``[dx, dy, dyaw]`` (the convention of the
odometry message). All functions work on any leading shape and are ONNX-friendly (no data-dependent control flow).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["compose", "integrate_deltas", "pose_deltas", "relative_poses", "unwrap_yaw", "wrap_angle"]


def wrap_angle(a: Tensor) -> Tensor:
    """Angles wrapped into [-pi, pi)."""
    return torch.remainder(a + math.pi, 2.0 * math.pi) - math.pi


def unwrap_yaw(pose: Tensor) -> Tensor:
    """``pose`` (..., T, 3) with yaw made continuous along T (so yaw differences count whole turns)."""
    dyaw = wrap_angle(pose[..., 1:, 2] - pose[..., :-1, 2])
    yaw = torch.cat([pose[..., :1, 2], pose[..., :1, 2] + torch.cumsum(dyaw, dim=-1)], dim=-1)
    return torch.cat([pose[..., :2], yaw.unsqueeze(-1)], dim=-1)


def relative_poses(origin: Tensor, poses: Tensor) -> Tensor:
    """``poses`` (..., 3) expressed in the frame of ``origin`` (..., 3) (broadcast). Yaw is the plain difference,
    so pass unwrapped yaws (:func:`unwrap_yaw`) to keep whole turns."""
    c, s = torch.cos(origin[..., 2]), torch.sin(origin[..., 2])
    dx, dy = poses[..., 0] - origin[..., 0], poses[..., 1] - origin[..., 1]
    return torch.stack([c * dx + s * dy, -s * dx + c * dy, poses[..., 2] - origin[..., 2]], dim=-1)


def pose_deltas(pose: Tensor) -> Tensor:
    """Per-tick motion of a pose sequence (..., T, 3): entry t is pose t in the frame of pose t - 1 (entry 0 is 0)."""
    pose = unwrap_yaw(pose)
    d = relative_poses(pose[..., :-1, :], pose[..., 1:, :])
    return torch.cat([torch.zeros_like(d[..., :1, :]), d], dim=-2)


def compose(pose: Tensor, delta: Tensor) -> Tensor:
    """``pose`` (..., 3) moved by ``delta`` (..., 3) given in its own frame."""
    c, s = torch.cos(pose[..., 2]), torch.sin(pose[..., 2])
    return torch.stack([
        pose[..., 0] + c * delta[..., 0] - s * delta[..., 1],
        pose[..., 1] + s * delta[..., 0] + c * delta[..., 1],
        pose[..., 2] + delta[..., 2],
    ], dim=-1)


def integrate_deltas(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """Chain per-step deltas into poses relative to the start, with first-order propagated uncertainty.

    ``mean``, ``var``: (..., H, 3) per-step delta mean and variance (independent per step and component).
    Returns ``(pose_mean, pose_var)``, each (..., H, 3): pose after step k relative to the pose before step 0
    (x, y in m, yaw in rad, yaw not wrapped), and the diagonal of its covariance, propagated as an EKF would:
    ``P' = F P F^T + G Q G^T`` with F the Jacobian of :func:`compose` in the pose and G = R(yaw) in the delta.
    """
    lead = mean.shape[:-2]
    pose = torch.zeros(*lead, 3, dtype=mean.dtype, device=mean.device)
    cov = torch.zeros(*lead, 3, 3, dtype=mean.dtype, device=mean.device)
    eye = torch.eye(3, dtype=mean.dtype, device=mean.device).expand(*lead, 3, 3)
    means, variances = [], []
    for k in range(mean.shape[-2]):
        d, q = mean[..., k, :], var[..., k, :]
        c, s = torch.cos(pose[..., 2]), torch.sin(pose[..., 2])
        zero, one = torch.zeros_like(c), torch.ones_like(c)
        # F = I + d(compose)/d(yaw) in the last column; G rotates the delta's noise into the start frame.
        f_col = torch.stack([-s * d[..., 0] - c * d[..., 1], c * d[..., 0] - s * d[..., 1], zero], dim=-1)
        f = eye + torch.stack([torch.zeros_like(f_col), torch.zeros_like(f_col), f_col], dim=-1)
        g = torch.stack([torch.stack([c, -s, zero], -1), torch.stack([s, c, zero], -1), torch.stack([zero, zero, one], -1)], dim=-2)
        cov = f @ cov @ f.transpose(-1, -2) + (g * q.unsqueeze(-2)) @ g.transpose(-1, -2)
        pose = compose(pose, d)
        means.append(pose)
        # The diagonal as a strided slice (entries 0, 4, 8): torch.diagonal exports to ONNX as an If subgraph.
        variances.append(cov.flatten(-2)[..., ::4])
    return torch.stack(means, dim=-2), torch.stack(variances, dim=-2)
