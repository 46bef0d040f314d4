"""Sensor-fusion encoder: one encoder per modality, fused with each modality's mask and age.

Every modality is encoded every tick, present or not (no data-dependent control flow, so the graph exports to
ONNX as is); an absent modality's embedding is zeroed by its mask and the fusion layer sees the mask and the age
explicitly, so a missing, late or dropped sensor is an ordinary input. Inputs are already normalized.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from torch.nn import functional as F

from worldmodel.model.config import ModalitySpec, ModelConfig, derive

__all__ = ["FusionEncoder", "ImageEncoder", "RangesEncoder", "SamplesEncoder", "VectorEncoder", "mlp"]


def mlp(inp: int, hidden: int, out: int, layers: int = 1) -> nn.Sequential:
    """``layers`` x (Linear, LayerNorm, ELU) then a Linear to ``out``."""
    mods: list[nn.Module] = []
    width = inp
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.ELU()]
        width = hidden
    mods.append(nn.Linear(width, out))
    return nn.Sequential(*mods)


class RangesEncoder(nn.Module):
    """A planar scan (N,) normalized, with its per-beam validity (N,) (0 = no return) -> (E,).

    A stack of 1-D convolutions with kernel = stride (``ranges_patches``), each written as a reshape into
    patches plus a Linear: the same function as ``Conv1d(k=p, stride=p)``, at matmul speed on a CPU (a small
    conv pays more in dispatch than in arithmetic) and with nothing to export but MatMul. The scan is first
    padded by wrap-around (beam 0 follows the last beam) to a multiple of the patches' product.
    """

    def __init__(self, spec: ModalitySpec, cfg: ModelConfig) -> None:
        super().__init__()
        d = derive(cfg)
        self.pad = d.ranges_pad[spec.name]
        self.patches = cfg.ranges_patches
        self.lengths = d.ranges_lengths[spec.name]
        self.channels = (2,) + cfg.ranges_channels
        self.layers = nn.ModuleList(nn.Linear(p * cin, cout) for p, cin, cout in zip(self.patches, self.channels, self.channels[1:]))
        self.out = nn.Linear(self.lengths[-1] * self.channels[-1], cfg.modality_embed)

    def forward(self, x: Tensor, beam_valid: Tensor) -> Tensor:
        """``x`` (B, N) normalized ranges, ``beam_valid`` (B, N) in {0, 1} -> (B, E)."""
        h = torch.stack([x * beam_valid, beam_valid], dim=-1)
        if self.pad:
            h = torch.cat([h, h[:, : self.pad]], dim=1)
        for layer, p, n, cin in zip(self.layers, self.patches, self.lengths, self.channels):
            h = F.elu(layer(h.reshape(-1, n, p * cin)))
        return self.out(h.flatten(1))


class ImageEncoder(nn.Module):
    """A depth image (H, W) normalized, 0 in the raw image meaning no return -> (E,).

    Two input channels, the normalized depth (0 where invalid) and the validity, so "no return" is not confused
    with a normalized depth of 0. Layers are 2-D convolutions with kernel = stride = p (``image_patches``),
    written as patch reshapes plus a Linear, channels last (see :class:`RangesEncoder` for why).
    """

    def __init__(self, spec: ModalitySpec, cfg: ModelConfig) -> None:
        super().__init__()
        self.patches = cfg.image_patches
        self.shapes = (spec.shape,) + derive(cfg).image_shapes[spec.name]
        self.channels = (2,) + cfg.image_channels
        self.layers = nn.ModuleList(nn.Linear(p * p * cin, cout) for p, cin, cout in zip(self.patches, self.channels, self.channels[1:]))
        h, w = self.shapes[-1]
        self.out = nn.Linear(h * w * self.channels[-1], cfg.modality_embed)

    def forward(self, x: Tensor, pixel_valid: Tensor) -> Tensor:
        """``x`` (B, H, W) normalized depth, ``pixel_valid`` (B, H, W) in {0, 1} -> (B, E)."""
        h = torch.stack([x * pixel_valid, pixel_valid], dim=-1)
        for layer, p, (hh, ww), (ho, wo), cin in zip(self.layers, self.patches, self.shapes, self.shapes[1:], self.channels):
            h = h.reshape(-1, ho, p, wo, p, cin).permute(0, 1, 3, 2, 4, 5).reshape(-1, ho, wo, p * p * cin)
            h = F.elu(layer(h))
        return self.out(h.flatten(1))


class SamplesEncoder(nn.Module):
    """K high-rate samples of C channels with a per-sample mask (K,) -> (E,): an MLP over the masked samples."""

    def __init__(self, spec: ModalitySpec, cfg: ModelConfig) -> None:
        super().__init__()
        k, c = spec.shape
        self.net = nn.Sequential(mlp(k * (c + 1), cfg.modality_embed, cfg.modality_embed), nn.ELU())

    def forward(self, x: Tensor, sample_mask: Tensor) -> Tensor:
        """``x`` (B, K, C), ``sample_mask`` (B, K) -> (B, E)."""
        m = sample_mask.unsqueeze(-1)
        return self.net(torch.cat([x * m, m], dim=-1).flatten(1))


class VectorEncoder(nn.Module):
    """A vector (D,) (odometry, a gym observation) -> (E,)."""

    def __init__(self, spec: ModalitySpec, cfg: ModelConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(mlp(spec.shape[0], cfg.modality_embed, cfg.modality_embed), nn.ELU())

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (B, D) -> (B, E)."""
        return self.net(x)


class FusionEncoder(nn.Module):
    """All modalities -> one embedding (B, embed).

    Input per modality ``name`` (normalized): ``name`` (B, *shape); ``name_mask`` (B,) in {0, 1} (IMU: (B, K) per
    sample); ``name_age`` (B,) seconds since the sample. Image and ranges modalities also take ``name_valid``
    (B, H, W) or (B, N), the per-pixel or per-beam validity. Each embedding is multiplied by its modality mask and concatenated with ``[mask,
    clip(age / age_scale_s)]``; a Linear-LayerNorm-ELU fuses them.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        encoders: dict[str, nn.Module] = {}
        for spec in cfg.modalities:
            if spec.kind == "ranges":
                encoders[spec.name] = RangesEncoder(spec, cfg)
            elif spec.kind == "image":
                encoders[spec.name] = ImageEncoder(spec, cfg)
            elif spec.kind == "samples":
                encoders[spec.name] = SamplesEncoder(spec, cfg)
            else:
                encoders[spec.name] = VectorEncoder(spec, cfg)
        self.encoders = nn.ModuleDict(encoders)
        self.fuse = nn.Sequential(nn.Linear(derive(cfg).fusion_in, cfg.embed), nn.LayerNorm(cfg.embed), nn.ELU())

    def encode_modality(self, spec: ModalitySpec, inputs: Mapping[str, Tensor]) -> Tensor:
        """One modality's embedding (N, E), before masking."""
        enc = self.encoders[spec.name]
        x = inputs[spec.name]
        if spec.kind in ("image", "ranges"):
            return enc(x, inputs[f"{spec.name}_valid"])
        if spec.kind == "samples":
            return enc(x, inputs[f"{spec.name}_mask"])
        return enc(x)

    def fuse_embeddings(self, embeddings: Mapping[str, Tensor], masks: Mapping[str, Tensor], ages: Mapping[str, Tensor]) -> Tensor:
        """Per-modality embeddings (N, E), tick masks (N,) and ages (N,) s -> fused (N, embed)."""
        names = [spec.name for spec in self.cfg.modalities]
        # Stacked once rather than per modality: fewer ops per tick, which is what the eager belief update pays for.
        mask = torch.stack([masks[n] for n in names], dim=-1)
        age = (torch.stack([ages[n] for n in names], dim=-1) / self.cfg.age_scale_s).clamp(0.0, self.cfg.age_clip)
        emb = torch.stack([embeddings[n] for n in names], dim=-2) * mask.unsqueeze(-1)
        return self.fuse(torch.cat([emb.flatten(-2), mask, age], dim=-1))

    def forward(self, inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor], ages: Mapping[str, Tensor]) -> Tensor:
        """``inputs`` as in the class docstring; ``masks``/``ages``: per-modality tick mask and age (N,)."""
        embeddings = {spec.name: self.encode_modality(spec, inputs) for spec in self.cfg.modalities}
        return self.fuse_embeddings(embeddings, masks, ages)
