"""A replay buffer that gives every transition of an episode the episode's final reward (AMC's trick).

The pruning reward arrives only after the last unit. With ordinary one-step targets and gamma 1, an off-policy critic
must bootstrap that reward back through a dozen steps; its overestimates compound and the actor runs to the edge of
the action range, and its plans fall below random search after its warm-up. Storing the final reward on every
transition of the episode and training with gamma 0 turns the critic into a regression of the episode's outcome on
(unit, ratio), with nothing to bootstrap.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.buffers import ReplayBuffer


class EpisodeRewardReplayBuffer(ReplayBuffer):
    """Holds an episode's transitions back until it ends, then stores them all with its final reward.

    Use with ``gamma=0`` (the stored reward already is the episode's return). With several environments their
    episodes must run in lockstep (all the same length, reset together), as the pruning environments do.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]] = []

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        self._pending.append((np.copy(obs), np.copy(next_obs), np.copy(action), infos))
        ended = np.asarray(done, dtype=bool).reshape(-1)
        if not ended.any():
            return
        if not ended.all():
            raise ValueError("EpisodeRewardReplayBuffer: environments must end their episodes together")
        final = np.asarray(reward, dtype=np.float32).reshape(self.n_envs)
        for o, n, a, i in self._pending:
            super().add(o, n, a, final, np.ones(self.n_envs, dtype=np.float32), i)
        self._pending = []
