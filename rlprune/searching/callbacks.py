"""SB3 callback for searches: search metrics to TensorBoard, a progress bar, and periodic agent checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HParam, Image, TensorBoardOutputFormat
from tqdm import tqdm

from rlprune.searching.recorder import SearchRecorder

_TB_ONLY = ("stdout", "log", "json", "csv")


class SearchCallback(BaseCallback):
    """Logs ``search/*`` scalars per finished episode with ``self.logger.record``, the best plan's profile and the
    search scatter as images, shows progress, saves the agent every ``checkpoint_every`` episodes and stops the agent
    once ``max_episodes`` have been evaluated.

    :param recorder: the run's recorder (it already holds episodes from before a resume).
    :param save: called with the recorder to checkpoint the agent.
    :param hparams: the run's settings for TensorBoard's HParams tab; their metrics are the ``search/best_*`` scalars,
        whose last values are the run's final results.
    """

    def __init__(
        self,
        recorder: SearchRecorder,
        max_episodes: int,
        checkpoint_every: int,
        save: Callable[[], None],
        progress: bool = True,
        hparams: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.recorder = recorder
        self.max_episodes = max_episodes
        self.checkpoint_every = checkpoint_every
        self._saved_at = recorder.episodes  # with n envs the count moves by n: save by distance, not by multiple
        self.save = save
        self.hparams = hparams
        self.bar = tqdm(
            total=max_episodes,
            initial=recorder.episodes,
            desc="search",
            unit="ep",
            disable=not progress,
            dynamic_ncols=True,
        )

    def _on_training_start(self) -> None:
        """The HParams entry and the custom-scalars layout, written once per session into the agent's TensorBoard."""
        from rlprune.reporting.outputs import add_search_layout

        for fmt in self.logger.output_formats:
            if isinstance(fmt, TensorBoardOutputFormat):
                add_search_layout(fmt.writer)
        if self.hparams is not None:
            metrics = {"search/best_reward": 0.0, "search/best_accuracy": 0.0}  # placeholders; the scalars follow
            self.logger.record("hparams", HParam(self.hparams, metrics), exclude=_TB_ONLY)

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
            for tag, image in (
                ("search/best_plan", self.recorder.best_plan_image()),
                ("search/scatter", self.recorder.scatter_image()),
            ):
                if image is not None:
                    self.logger.record(tag, Image(image, "HWC"), exclude=_TB_ONLY)
            self.logger.dump(self.num_timesteps)
            self.bar.update(1)
            self.bar.set_postfix(best=f"{best['accuracy']:.2f}%", last=f"{info['accuracy']:.2f}%")
            if self.checkpoint_every and self.recorder.episodes - self._saved_at >= self.checkpoint_every:
                self.save()
                self._saved_at = self.recorder.episodes
            if self.recorder.episodes >= self.max_episodes:
                return False
        return True

    def _on_training_end(self) -> None:
        self.bar.close()
