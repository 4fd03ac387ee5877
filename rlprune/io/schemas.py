"""Schemas of the files rlprune writes and a user can be handed back: checkpoint sidecars, plans, policy metadata and
search records.

A file is parsed under limits (:mod:`rlprune.io.safe`), then validated here before any field is used: types, ranges,
finite numbers and the consistency between fields (mean/std per input channel, one kept channel count per ratio).
Fields rlprune does not use may be present (provenance, recipes) and are kept as they are.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlprune.errors import RLPruneError
from rlprune.io.safe import check_tree, quote

CHECKPOINT_FORMAT = "rlprune-checkpoint/1"
PLAN_FORMAT = "rlprune-plan/1"
POLICY_FORMAT = "rlprune-policy/1"
SHA256 = r"^[0-9a-f]{64}$"
MODEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*)?$")
MAX_UNITS = 10_000
MAX_CHANNELS = 1 << 30  # channels of a unit; a weight-level unit counts weights
MAX_POLICY_WEIGHTS = 1 << 24  # a policy network's weights (64 MB in float32); SB3's defaults hold under 200,000
GRANULARITY_PATTERN = r"^(channel|unstructured|[1-9][0-9]?:[1-9][0-9]?)$"  # a plan's or policy's unit kind


def _check_granularity(value: str) -> None:
    if ":" in value:
        n, m = (int(v) for v in value.split(":"))
        if not n < m:
            raise ValueError(f"granularity '{value}': an N:M pattern needs N < M")


class _Open(BaseModel):
    """Known fields typed and checked; other fields kept (provenance rlprune writes but never interprets)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=(), allow_inf_nan=False)


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


def describe(error: ValidationError, source: str) -> str:
    """The first validation problem as one short line: field path, what was expected, a quoted prefix of the value."""
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{loc[:60]}'"
    if first["type"] == "missing":
        return f"{source}: missing key '{loc[:60]}'"
    msg = first["msg"].removeprefix("Value error, ")
    return f"{source}: {loc[:60]}: {msg[:120]} (got {quote(first.get('input'))})"


def validated(schema: type[Any], data: Any, source: str) -> Any:
    """``data`` (already parsed under limits) validated against ``schema``; problems become one line."""
    check_tree(data, source)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise RLPruneError(describe(exc, source)) from None


class DatasetRecord(_Open):
    """Where a checkpoint's data came from, to re-create the same splits."""

    name: Literal["cifar10", "imagefolder"] = "cifar10"
    root: str | None = Field(None, max_length=4096)
    val_size: int = Field(5000, ge=0)
    split_seed: int = 0
    input_size: int = Field(32, ge=8, le=4096)
    channels: Literal[1, 3] = 3
    split_sha256: str | None = Field(None, pattern=SHA256)  # which images the validation split holds


class SidecarSchema(_Open):
    """A checkpoint's JSON sidecar (``<name>.json`` beside ``<name>.safetensors``)."""

    format: Literal["rlprune-checkpoint/1"]
    model: str = Field(min_length=1, max_length=200)
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    classes: list[str] | None = Field(None, min_length=1, max_length=100_000)
    mean: list[float] | None = None
    std: list[float] | None = None
    in_channels: int = Field(3, ge=1, le=64)
    input_size: int = Field(32, ge=8, le=4096)
    dataset: DatasetRecord | None = None
    plan: dict[str, Any] | None = None
    weights_file: str | None = Field(None, max_length=4096)
    weights_sha256: str | None = Field(None, pattern=SHA256)
    val_accuracy: float | None = None
    test_accuracy: float | None = None

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not MODEL_NAME.match(value):
            raise ValueError("expected a zoo name or an import path 'package.module:factory'")
        return value

    @field_validator("std")
    @classmethod
    def _std_positive(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not all(v > 0 for v in value):
            raise ValueError("every std must be > 0 (inputs are divided by it)")
        return value

    @model_validator(mode="after")
    def _per_channel(self) -> SidecarSchema:
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and len(values) != self.in_channels:
                raise ValueError(f"{key} has {len(values)} values, expected one per input channel ({self.in_channels})")
        return self


class PlanSchema(_Closed):
    """A saved plan (``plan.json``, ``best_plan.json``, a pruned checkpoint's ``plan``)."""

    format: Literal["rlprune-plan/1"]
    model: str = Field("", max_length=200)
    fingerprint: str = Field(min_length=1, max_length=128)
    importance: str = Field("l1", min_length=1, max_length=40)
    round_to: int | None = Field(None, ge=1, le=MAX_CHANNELS)
    min_channels: int = Field(1, ge=1, le=MAX_CHANNELS)
    ratios: dict[str, float] = Field(max_length=MAX_UNITS)
    channels: dict[str, int] = Field(max_length=MAX_UNITS)
    kept: dict[str, list[int]] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    # what analysis was told (rlprune.pruning.options): parts left alone, attention head counts
    ignore: list[Annotated[str, Field(min_length=1, max_length=300)]] = Field(
        default_factory=list, max_length=MAX_UNITS
    )
    heads: dict[str, int | str] = Field(default_factory=dict, max_length=MAX_UNITS)
    # channel groups, or weights per layer (rlprune.pruning.weights): unstructured or an N:M pattern
    granularity: str = Field("channel", pattern=GRANULARITY_PATTERN)

    @model_validator(mode="after")
    def _consistent(self) -> PlanSchema:
        _check_granularity(self.granularity)
        if self.granularity != "channel" and self.kept:
            raise ValueError(f"a {self.granularity} plan zeroes weights; it has no kept channel indices")
        for name, ratio in self.ratios.items():
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"unit '{name[:60]}': ratio {ratio} outside [0, 1)")
        if set(self.ratios) != set(self.channels):
            odd = sorted(set(self.ratios) ^ set(self.channels))[0]
            raise ValueError(f"unit '{odd[:60]}' has a ratio or a channel count but not both")
        for name, n in self.channels.items():
            if not 1 <= n <= MAX_CHANNELS:
                raise ValueError(f"unit '{name[:60]}': keeps {n} channels; expected at least 1")
        for name, idx in (self.kept or {}).items():
            if name not in self.channels:
                raise ValueError(f"kept: unit '{name[:60]}' is not in the plan")
            if len(idx) != self.channels[name] or len(set(idx)) != len(idx) or any(i < 0 for i in idx):
                raise ValueError(f"kept: unit '{name[:60]}' needs {self.channels[name]} distinct indices >= 0")
        return self


class HandPlanSchema(_Closed):
    """A hand-written plan: ratios by unit name (or one per unit in forward order) and optional settings."""

    ratios: dict[str, float] | list[float] = Field(max_length=MAX_UNITS)
    model: str = Field("", max_length=200)
    importance: str = Field("l1", min_length=1, max_length=40)
    round_to: int | None = Field(None, ge=1, le=MAX_CHANNELS)
    min_channels: int = Field(1, ge=1, le=MAX_CHANNELS)


class PolicyKwargs(_Closed):
    """The network settings of a saved policy: sizes and a named activation, nothing that names code."""

    net_arch: list[int] | dict[str, list[int]] | None = None
    activation_fn: Literal["torch.nn.modules.activation.Tanh", "torch.nn.modules.activation.ReLU"] | None = None
    log_std_init: float | None = Field(None, ge=-20, le=20)
    ortho_init: bool | None = None
    squash_output: bool | None = None
    use_sde: bool | None = None
    full_std: bool | None = None
    use_expln: bool | None = None
    n_critics: int | None = Field(None, ge=1, le=16)
    share_features_extractor: bool | None = None
    normalize_images: bool | None = None

    @field_validator("net_arch")
    @classmethod
    def _sizes(cls, value: Any) -> Any:
        layers = value if isinstance(value, list) else [n for v in (value or {}).values() for n in v]
        if isinstance(value, dict) and not set(value) <= {"pi", "vf", "qf"}:
            raise ValueError("expected keys pi, vf, qf")
        if len(layers) > 32 or not all(1 <= n <= 4096 for n in layers):
            raise ValueError("expected at most 32 layers of 1 to 4096 units")
        return value

    def weights(self, algorithm: str) -> int:
        """About how many weights ``algorithm``'s network holds with these settings (an actor, and PPO's value net or
        the off-policy algorithms' critics), at most 64 observed features: bounded before the network is built, so a
        file cannot make the loader allocate gigabytes."""
        arch = self.net_arch or []
        heads = ("pi", "vf") if algorithm == "ppo" else ("pi", "qf")
        critics = self.n_critics or (1 if algorithm == "ddpg" else 2)  # stable-baselines3's defaults

        def count(sizes: list[int]) -> int:  # observation -> hidden layers -> output
            dims = [64, *sizes, 1]
            return sum(a * b for a, b in itertools.pairwise(dims))

        stacks = {k: (arch.get(k, []) if isinstance(arch, dict) else arch) for k in heads}
        return sum(count(s) * (critics if k == "qf" else 1) for k, s in stacks.items())


class PolicyLatency(_Open):
    """How a latency-budget policy's training timed plans: applying it times the new model the same way."""

    batch_size: int = Field(1, ge=1, le=4096)
    calibration_plans: int = Field(8, ge=0, le=1000)
    runtime: Literal["torch", "onnxruntime", "onnxruntime-int8"] = "torch"


class PolicyTrainingConfig(_Open):
    """The training config a policy records (kept as provenance); only what applying it reads is checked."""

    latency: PolicyLatency | None = None


class FeatureEnvelope(_Open):
    """The range of each static feature over a policy's training units (``rlprune.envs.features.feature_envelope``)."""

    names: list[str] = Field(max_length=64)  # forward-compatible like the policy metadata: other keys are kept
    low: list[float] = Field(max_length=64)
    high: list[float] = Field(max_length=64)

    @model_validator(mode="after")
    def _ranges(self) -> FeatureEnvelope:
        if not len(self.names) == len(self.low) == len(self.high):
            raise ValueError("names, low and high must have one entry per feature")
        pairs = zip(self.low, self.high, strict=True)
        if not all(math.isfinite(lo) and math.isfinite(hi) and lo <= hi for lo, hi in pairs):
            raise ValueError("every feature needs finite low <= high")
        return self


class PolicyMeta(_Open):
    """A saved policy's ``policy.json``: how to rebuild the network and how its actions map to ratios."""

    format: Literal["rlprune-policy/1"]
    algorithm: Literal["ppo", "ddpg", "sac", "td3"]
    feature_version: int
    policy_kwargs: PolicyKwargs = Field(default_factory=PolicyKwargs)
    min_ratio: float = Field(0.0, ge=0, lt=1)
    max_ratio: float = Field(0.8, gt=0, lt=1)
    round_to: int | None = Field(None, ge=1, le=MAX_CHANNELS)
    min_channels: int = Field(1, ge=1, le=MAX_CHANNELS)
    budget: Literal["macs", "latency", "params"] = "macs"
    target: float | tuple[float, float] | None = None
    importance: str = Field("l1", min_length=1, max_length=40)
    granularity: str = Field("channel", pattern=GRANULARITY_PATTERN)  # what it decides per unit
    prior: Literal["none", "uniform", "magnitude"] = "none"  # what action 0 stood for (rlprune.envs.priors)
    config: PolicyTrainingConfig = Field(default_factory=PolicyTrainingConfig)
    feature_envelope: FeatureEnvelope | None = None  # policies saved before it have none

    @model_validator(mode="after")
    def _ranges(self) -> PolicyMeta:
        _check_granularity(self.granularity)
        if self.min_ratio >= self.max_ratio:
            raise ValueError(f"min_ratio ({self.min_ratio}) must be below max_ratio ({self.max_ratio})")
        if (size := self.policy_kwargs.weights(self.algorithm)) > MAX_POLICY_WEIGHTS:
            raise ValueError(
                f"policy_kwargs: a {self.algorithm} network of about {size:,} weights (at most {MAX_POLICY_WEIGHTS:,})"
            )
        targets = () if self.target is None else (self.target,) if isinstance(self.target, float) else self.target
        if not all(0 < t <= 1 for t in targets) or list(targets) != sorted(targets):
            raise ValueError("target must be a ratio in (0, 1] or a range [low, high] inside it")
        return self


class EpisodeRecord(_Open):
    """One line of ``episodes.jsonl``: the fields a resumed search reads back."""

    episode: int = Field(ge=1)
    reward: float
    accuracy: float
    macs_ratio: float = Field(ge=0)
    ratios: list[float] = Field(max_length=MAX_UNITS)
    plan: dict[str, Any]

    @field_validator("plan")
    @classmethod
    def _plan(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            PlanSchema.model_validate(value)
        except ValidationError as exc:
            raise ValueError(describe(exc, "plan")) from None
        return value
