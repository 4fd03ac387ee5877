"""Gymnasium environments; importing this package registers ``rlprune/LayerPruning-v0``."""

import gymnasium as gym

from rlprune.envs.features import FEATURE_VERSION, FEATURES, N_FEATURES
from rlprune.envs.layer_pruning import LayerPruningEnv
from rlprune.envs.rewards import REWARDS, Outcome, Reward, get_reward

ENV_ID = "rlprune/LayerPruning-v0"
if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="rlprune.envs.layer_pruning:LayerPruningEnv")

__all__ = [
    "ENV_ID",
    "FEATURES",
    "FEATURE_VERSION",
    "N_FEATURES",
    "REWARDS",
    "LayerPruningEnv",
    "Outcome",
    "Reward",
    "get_reward",
]
