"""An agent's training state as tensors only (policy, optimizers, step count): a resumed search continues the
agent where it stopped, and the file loads with weights_only (nothing in it runs code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlprune.io.checkpoint import load_state, save_state


def _agent_optimizers(agent: Any) -> dict[str, torch.optim.Optimizer]:
    found = {}
    for name in ("policy.optimizer", "actor.optimizer", "critic.optimizer", "ent_coef_optimizer"):
        obj = agent
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.optim.Optimizer):
            found[name] = obj
    return found


def save_agent_state(agent: Any, path: Path, episodes: int) -> None:
    """Checkpoint the agent as tensors only (policy, optimizers, step count); loaded with ``weights_only``."""
    state: dict[str, Any] = {
        "policy": agent.policy.state_dict(),
        "num_timesteps": agent.num_timesteps,
        "episodes": episodes,
    }
    for name, opt in _agent_optimizers(agent).items():
        state[f"optim:{name}"] = opt.state_dict()
    if getattr(agent, "log_ent_coef", None) is not None:
        state["log_ent_coef"] = agent.log_ent_coef.detach().clone()
    save_state(path, state)


def load_agent_state(agent: Any, path: Path) -> int:
    state = load_state(path)
    agent.policy.load_state_dict(state["policy"])
    for name, opt in _agent_optimizers(agent).items():
        if f"optim:{name}" in state:
            opt.load_state_dict(state[f"optim:{name}"])
    if "log_ent_coef" in state and getattr(agent, "log_ent_coef", None) is not None:
        with torch.no_grad():
            agent.log_ent_coef.copy_(state["log_ent_coef"])
    agent.num_timesteps = int(state["num_timesteps"])
    return int(state["episodes"])


__all__ = ["load_agent_state", "save_agent_state"]
