"""Configs: YAML files validated by pydantic (``extra="forbid"``: a typo'd key is an error), with ``--set a.b=value``
overrides and the resolved config written into the run directory.

:mod:`~rlprune.config.base` holds what every config shares, :mod:`~rlprune.config.training` the dataset, model and
training recipe, :mod:`~rlprune.config.experiment` the search (and ``rlprune run``) config."""

from rlprune.config.base import Device, RunName, Seed, Strict, apply_overrides, load_config, validate, write_resolved
from rlprune.config.experiment import (
    MULTI_MODEL_REWARD,
    AgentConfig,
    EnvConfig,
    FinetuneConfig,
    LatencyConfig,
    PrePrunedConfig,
    ProxyConfig,
    PruneConfig,
    RoundsConfig,
    SearchConfig,
    model_label,
)
from rlprune.config.training import DataConfig, DistillConfig, ModelConfig, PretrainConfig, SWAConfig, TrainConfig

__all__ = [
    "MULTI_MODEL_REWARD",
    "AgentConfig",
    "DataConfig",
    "Device",
    "DistillConfig",
    "EnvConfig",
    "FinetuneConfig",
    "LatencyConfig",
    "ModelConfig",
    "PrePrunedConfig",
    "PretrainConfig",
    "ProxyConfig",
    "PruneConfig",
    "RoundsConfig",
    "RunName",
    "SWAConfig",
    "SearchConfig",
    "Seed",
    "Strict",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "model_label",
    "validate",
    "write_resolved",
]
