"""SB3 callback for searches: search metrics to TensorBoard, a progress bar, and periodic agent checkpoints."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Image
from tqdm import tqdm

from rlprune.agents.recorder import SearchRecorder, png_to_hwc, ratio_plot_png


class SearchCallback(BaseCallback):
    """Logs ``search/*`` scalars per finished episode with ``self.logger.record``, an image of the best plan's
    per-layer ratios, shows progress, saves the agent every ``checkpoint_every`` episodes and stops the agent once
    ``max_episodes`` have been evaluated.

    :param recorder: the run's recorder (it already holds episodes from before a resume).
    :param save: called with the recorder to checkpoint the agent.
    """

    def __init__(
        self,
        recorder: SearchRecorder,
        max_episodes: int,
        checkpoint_every: int,
        save: Callable[[], None],
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.recorder = recorder
        self.max_episodes = max_episodes
        self.checkpoint_every = checkpoint_every
        self.save = save
        self.bar = tqdm(
            total=max_episodes,
            initial=recorder.episodes,
            desc="search",
            unit="ep",
            disable=not progress,
            dynamic_ncols=True,
        )
        self._best_seen = recorder.best["episode"] if recorder.best else None

    def _on_step(self) -> bool:
        dones = self.locals.get("dones", [])
        for i, done in enumerate(np.atleast_1d(dones)):
            if not done:
                continue
            info = self.locals["infos"][i]
            if "reward" not in info:
                continue
            rec, best = self.recorder.last, self.recorder.best
            for key in ("accuracy", "macs_ratio", "reward"):
                self.logger.record(f"search/{key}", info[key])
            if rec and rec["latency_ratio"] is not None:
                self.logger.record("search/latency_ratio", rec["latency_ratio"])
            self.logger.record("search/best_reward", best["reward"])
            self.logger.record("search/best_accuracy", best["accuracy"])
            self.logger.record("search/episodes", self.recorder.episodes)
            if best["episode"] != self._best_seen:
                self._best_seen = best["episode"]
                png = ratio_plot_png(best["ratios"], f"best plan, episode {best['episode']}")
                self.logger.record(
                    "search/best_plan", Image(png_to_hwc(png), "HWC"), exclude=("stdout", "log", "json", "csv")
                )
            self.logger.dump(self.num_timesteps)
            self.bar.update(1)
            self.bar.set_postfix(best=f"{best['accuracy']:.2f}%", last=f"{info['accuracy']:.2f}%")
            if self.checkpoint_every and self.recorder.episodes % self.checkpoint_every == 0:
                self.save()
            if self.recorder.episodes >= self.max_episodes:
                return False
        return True

    def _on_training_end(self) -> None:
        self.bar.close()
