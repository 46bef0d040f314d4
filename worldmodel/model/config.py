"""The world model's typed configuration: modality specs, size presets, and the values derived from them.

A :class:`ModelConfig` is frozen and validated at construction; every size the modules need comes from
:func:`derive`, the one place that computes them. Modalities are described by :class:`ModalitySpec` (name, kind,
per-tick shape); a training run reads them off its data (:func:`modalities_from_batch`), so the same model code
serves the hallway robot (LiDAR, depth, IMU, odometry) and a gymnasium benchmark (one observation vector).

Example::

    cfg = model_config("default", modalities_from_batch(batch), action_dim=2, pose_head=True)
    cfg_small = model_config("tiny", cfg.modalities, cfg.action_dim, cfg.pose_head, deter=48)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

__all__ = [
    "ConfigError",
    "Derived",
    "KINDS",
    "MODALITY_KINDS_BY_NAME",
    "ModalitySpec",
    "ModelConfig",
    "PRESETS",
    "derive",
    "model_config",
    "model_config_from_dict",
    "modalities_from_batch",
]

#: Modality kinds and the per-tick shape each takes: ``ranges`` (N,) a planar scan (circular 1-D conv);
#: ``image`` (H, W) a depth image, 0 = no return (small CNN); ``samples`` (K, C) the K high-rate samples since the
#: previous tick, each with its own mask (MLP); ``odom`` (5,) = [v, omega, dx, dy, dyaw] with the deltas over the
#: previous tick (MLP; its head predicts rates so it is valid at any dt); ``vector`` (D,) a generic observation.
KINDS: dict[str, int] = {"ranges": 1, "image": 2, "samples": 2, "odom": 1, "vector": 1}
#: The kind of each modality name of the batch contract.
MODALITY_KINDS_BY_NAME: dict[str, str] = {"lidar": "ranges", "depth": "image", "imu": "samples", "odom": "odom", "obs": "vector"}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what to change."""


@dataclass(frozen=True)
class ModalitySpec:
    """One input modality: ``name`` (the batch key), ``kind`` (see :data:`KINDS`), ``shape`` per tick."""

    name: str
    kind: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"modality name {self.name!r} must be an identifier (it names tensors and buffers)")
        if self.kind not in KINDS:
            raise ConfigError(f"modality {self.name}: kind {self.kind!r} is not one of {sorted(KINDS)}")
        shape = tuple(int(s) for s in self.shape)
        object.__setattr__(self, "shape", shape)
        if len(shape) != KINDS[self.kind] or min(shape) < 1:
            raise ConfigError(f"modality {self.name}: a {self.kind} modality has a {KINDS[self.kind]}-d shape of positive sizes, got {shape}")
        if self.kind == "odom" and shape != (5,):
            raise ConfigError(f"modality {self.name}: odom is [v, omega, dx, dy, dyaw], shape (5,), got {shape}")

    @property
    def has_sample_mask(self) -> bool:
        """Whether the mask is per sample, (B, K), rather than per tick, (B,)."""
        return self.kind == "samples"


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and constants of :class:`worldmodel.model.WorldModel`. Units in field names; widths in features.

    ``deter``/``stoch``: recurrent state and Gaussian stochastic latent widths. ``hidden``: MLP width of the
    core and heads. ``embed``: fused observation embedding; ``modality_embed``: each encoder's output.
    ``ranges_patches``/``ranges_channels`` and ``image_patches``/``image_channels``: the encoders' layers, one
    per entry, each a convolution with kernel = stride = the patch size (in pixels: p x p) and that many output
    channels; a scan is wrap-around padded to a multiple of the patches' product, an image's sides must be
    multiples of it. ``head_layers``: hidden layers per head. ``image_decode_factor``:
    image predictions are at (H/f, W/f). ``min_std``: floor of the latent std. ``log_std_min``/``log_std_max``:
    bounds of predicted log-std in normalized units. ``dt_ref_s``: the nominal tick, scaling the dt input.
    ``age_scale_s``: scale of the age input (clipped at ``age_clip``). ``no_return_m``: ranges at or above
    this are "no return" (out of range or dropped, reported as the sensor's maximum): flagged to the encoder
    and left out of the likelihood, as depth's 0 is; 0 means every range is a return.
    """

    modalities: tuple[ModalitySpec, ...]
    action_dim: int
    pose_head: bool = True
    deter: int = 128
    stoch: int = 32
    hidden: int = 128
    embed: int = 128
    modality_embed: int = 48
    ranges_patches: tuple[int, ...] = (4, 2, 3)
    ranges_channels: tuple[int, ...] = (16, 32, 32)
    image_patches: tuple[int, ...] = (4, 2, 2)
    image_channels: tuple[int, ...] = (16, 32, 32)
    image_decode_factor: int = 2
    head_layers: int = 1
    min_std: float = 0.1
    log_std_min: float = -6.0
    log_std_max: float = 2.0
    dt_ref_s: float = 0.02
    age_scale_s: float = 0.1
    age_clip: float = 10.0
    no_return_m: float = 0.0

    def __post_init__(self) -> None:
        mods = tuple(self.modalities)
        object.__setattr__(self, "modalities", mods)
        for name in ("ranges_patches", "ranges_channels", "image_patches", "image_channels"):
            object.__setattr__(self, name, tuple(int(c) for c in getattr(self, name)))
        if not mods:
            raise ConfigError("modalities: the model needs at least one input modality")
        if not all(isinstance(m, ModalitySpec) for m in mods):
            raise ConfigError("modalities: each entry must be a ModalitySpec (use ModalitySpec.from_dict for mappings)")
        names = [m.name for m in mods]
        if len(set(names)) != len(names):
            raise ConfigError(f"modalities: duplicate names in {names}")
        reserved = {"action", "pose", "dt", "valid"}
        if reserved & set(names):
            raise ConfigError(f"modalities: {sorted(reserved & set(names))} are batch keys, not modalities")
        for name in ("action_dim", "deter", "stoch", "hidden", "embed", "modality_embed", "image_decode_factor"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.head_layers < 0:
            raise ConfigError(f"head_layers must be >= 0, got {self.head_layers}")
        for kind in ("ranges", "image"):
            patches, channels = getattr(self, f"{kind}_patches"), getattr(self, f"{kind}_channels")
            if not patches or len(patches) != len(channels) or min(patches + channels) < 1:
                raise ConfigError(f"{kind}_patches {patches} and {kind}_channels {channels} need the same number (>= 1) of positive entries")
        if not 0.0 < self.min_std < 1.0:
            raise ConfigError(f"min_std must be in (0, 1), got {self.min_std}")
        if not self.log_std_min < self.log_std_max:
            raise ConfigError(f"log_std_min ({self.log_std_min}) must be below log_std_max ({self.log_std_max})")
        for name in ("dt_ref_s", "age_scale_s", "age_clip"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0.0):
                raise ConfigError(f"{name} must be a positive number, got {getattr(self, name)}")
        if not (math.isfinite(self.no_return_m) and self.no_return_m >= 0.0):
            raise ConfigError(f"no_return_m must be >= 0 (0: every range is a return), got {self.no_return_m}")
        for m in mods:
            if m.kind == "image":
                f = self.image_decode_factor
                if m.shape[0] % f or m.shape[1] % f:
                    raise ConfigError(f"image_decode_factor {f} must divide {m.name}'s shape {m.shape}")
        derive(self)  # every derived size must be valid (e.g. the convs must not shrink an input to nothing)

    def modality(self, name: str) -> ModalitySpec:
        """The spec of modality ``name``."""
        for m in self.modalities:
            if m.name == name:
                return m
        raise KeyError(f"no modality {name!r}; the model has {[m.name for m in self.modalities]}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able mapping; :meth:`from_dict` inverts it."""
        out = dataclasses.asdict(self)
        out["modalities"] = [{"name": m.name, "kind": m.kind, "shape": list(m.shape)} for m in self.modalities]
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ModelConfig:
        """A config from :meth:`to_dict`'s output; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"model config: unknown fields {unknown}; known: {sorted(known)}")
        kwargs = dict(raw)
        kwargs["modalities"] = tuple(
            ModalitySpec(str(m["name"]), str(m["kind"]), tuple(m["shape"])) for m in raw.get("modalities", ())
        )
        return cls(**kwargs)

    def differences(self, other: ModelConfig) -> list[str]:
        """``field: mine != theirs`` for every field that differs (empty when equal)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]


#: Size presets. ``default`` fits the control-rate budget on a 2-core CPU (belief update well under 1 ms eager,
#: 256 x 10 imagination in a few ms); ``tiny`` is for tests; ``large`` for a GPU.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(deter=32, stoch=8, hidden=32, embed=32, modality_embed=16, ranges_channels=(4, 8, 8), image_channels=(4, 8, 8)),
    "default": {},
    "large": dict(deter=512, stoch=64, hidden=512, embed=512, modality_embed=128, ranges_channels=(32, 64, 64),
                  image_channels=(32, 64, 64), head_layers=2),
}


def model_config(preset: str, modalities: Sequence[ModalitySpec], action_dim: int, pose_head: bool, /, **overrides: Any) -> ModelConfig:
    """A config from a size preset plus field overrides (a new object; presets are never mutated)."""
    if preset not in PRESETS:
        raise ConfigError(f"model.preset {preset!r} is not one of {sorted(PRESETS)}")
    reserved = {"modalities", "action_dim", "pose_head"} & set(overrides)
    if reserved:
        raise ConfigError(f"model: {sorted(reserved)} come from the data, not the preset section")
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"model: unknown fields {unknown}; known: {sorted(known - {'modalities', 'action_dim', 'pose_head'})}")
    kwargs = {**PRESETS[preset], **overrides}
    return ModelConfig(modalities=tuple(modalities), action_dim=int(action_dim), pose_head=bool(pose_head), **kwargs)


def model_config_from_dict(section: Mapping[str, Any] | None, modalities: Sequence[ModalitySpec], action_dim: int,
                           pose_head: bool) -> ModelConfig:
    """A config from a YAML ``model:`` section (``preset`` plus overrides) and what the data provides."""
    section = dict(section or {})
    preset = str(section.pop("preset", "default"))
    return model_config(preset, modalities, action_dim, pose_head, **section)


def modalities_from_batch(batch: Mapping[str, Any]) -> tuple[ModalitySpec, ...]:
    """The modality specs of a batch of the contract (keys ``lidar``, ``depth``, ``imu``, ``odom``, ``obs``).

    Only the trailing (per-tick) dims are read, so arrays may be (B, T, ...), (T, ...) or one tick.
    """
    specs = []
    for name, kind in MODALITY_KINDS_BY_NAME.items():
        if name in batch:
            specs.append(ModalitySpec(name, kind, tuple(batch[name].shape)[-KINDS[kind]:]))
    if not specs:
        raise ConfigError(f"the batch has none of the modality keys {sorted(MODALITY_KINDS_BY_NAME)}")
    return tuple(specs)


@dataclass(frozen=True)
class Derived:
    """Sizes computed from a :class:`ModelConfig` (by :func:`derive`, only)."""

    feat: int                                   # deter + stoch: the input width of every head
    ranges_pad: dict[str, int]                  # per ranges modality: beams appended by wrap-around
    ranges_lengths: dict[str, tuple[int, ...]]  # per ranges modality: length after each layer
    image_shapes: dict[str, tuple[tuple[int, int], ...]]  # per image modality: (h, w) after each layer
    image_decode_shapes: dict[str, tuple[int, int]]       # per image modality: predicted resolution
    fusion_in: int                              # sum of modality embeddings + 2 (mask, age) per modality
    transition_in: int                          # the GRU's input: stoch + action + 2 dt features


def derive(cfg: ModelConfig) -> Derived:
    """Every size the modules need, computed once from the config; raises :class:`ConfigError` when an image's
    sides are not multiples of the patches' product."""
    pads, ranges, images, decode = {}, {}, {}, {}
    for m in cfg.modalities:
        if m.kind == "ranges":
            total = math.prod(cfg.ranges_patches)
            n = -(-m.shape[0] // total) * total
            pads[m.name] = n - m.shape[0]
            lengths = []
            for p in cfg.ranges_patches:
                n //= p
                lengths.append(n)
            ranges[m.name] = tuple(lengths)
        elif m.kind == "image":
            total = math.prod(cfg.image_patches)
            h, w = m.shape
            if h % total or w % total:
                raise ConfigError(f"image_patches {cfg.image_patches}: their product {total} must divide {m.name}'s sides {m.shape}")
            shapes = []
            for p in cfg.image_patches:
                h, w = h // p, w // p
                shapes.append((h, w))
            images[m.name] = tuple(shapes)
            decode[m.name] = (m.shape[0] // cfg.image_decode_factor, m.shape[1] // cfg.image_decode_factor)
    return Derived(
        feat=cfg.deter + cfg.stoch,
        ranges_pad=pads,
        ranges_lengths=ranges,
        image_shapes=images,
        image_decode_shapes=decode,
        fusion_in=len(cfg.modalities) * (cfg.modality_embed + 2),
        transition_in=cfg.stoch + cfg.action_dim + 2,
    )
