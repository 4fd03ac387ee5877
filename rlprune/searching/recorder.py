"""Keeps the record of a search: every evaluated plan in ``episodes.jsonl``, the best plan in ``best_plan.json``,
and TensorBoard scalars for searchers that are not SB3 agents. Reloading the file on resume loses no episode."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rlprune.errors import RLPruneError
from rlprune.io.files import atomic_write_text
from rlprune.io.safe import MAX_LINE_BYTES, json_safe, parse_json, writing
from rlprune.io.schemas import EpisodeRecord, validated
from rlprune.pruning.plan import Plan
from rlprune.pruning.structure import Structure
from rlprune.reporting import figures, outputs

log = logging.getLogger("rlprune.searching.recorder")
PROFILE_EVERY = 10  # episodes between two TensorBoard drawings of the best plan (a drawing takes ~0.5 s)
SCATTER_EVERY = 25  # episodes between two TensorBoard drawings of the search scatter


class SearchRecorder:
    """Called by the environment at the end of every episode (``env.on_episode``).

    :param run_dir: the run directory; ``episodes.jsonl`` is appended to, ``best_plan.json`` replaced.
    :param writer: an optional TensorBoard ``SummaryWriter`` for searchers without an SB3 logger; with it the
        recorder also logs the best plan's profile and the search scatter and drives ``bar`` (a progress bar the
        caller may attach).
    :param structure: the searched model's units (the plan profile needs them; without it no profile is drawn).
    :param budget: ``macs`` or ``latency``: the cost the search scatter puts on its x axis.
    """

    def __init__(
        self, run_dir: Path, writer: Any | None = None, structure: Structure | None = None, budget: str = "macs"
    ) -> None:
        self.run_dir = run_dir
        self.structure = structure
        self.budget = budget
        self._drawn_best: int | None = None  # episode of the best plan last drawn for TensorBoard
        self._drawn_at = -PROFILE_EVERY
        self.path = run_dir / "episodes.jsonl"
        self.writer = writer
        self.bar: Any | None = None  # a progress bar for searchers without an SB3 callback (:meth:`follow`)
        self._mark = time.perf_counter()
        self.records: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.started = time.perf_counter()
        self.last: dict[str, Any] | None = None
        self.replay = 0  # episodes to pass over (a resumed deterministic searcher re-plays what is recorded)
        self.skipped: list[int] = []  # line numbers of unreadable records (reported, left in the file)
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        """Read every valid record; a torn or corrupt line (a crash, a bad disk, an editor) is skipped and reported,
        and every record after it is kept. The file is never rewritten: if it ends mid-line, a newline is appended so
        that the next record starts on a clean line (the torn text stays, for whoever wants to look at it)."""
        with writing(self.path):
            data = self.path.read_bytes()
        for number, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                if len(raw) > MAX_LINE_BYTES:
                    raise RLPruneError("line too long")
                rec = parse_json(raw.decode("utf-8"), "record")
                validated(EpisodeRecord, rec, "record")
            except (RLPruneError, UnicodeDecodeError):
                self.skipped.append(number)
                continue
            self._track(rec)
        if self.skipped:
            log.warning(
                "%s: skipped %d unreadable line(s) (line %s%s); the %d other records are kept",
                self.path,
                len(self.skipped),
                self.skipped[0],
                " and more" if len(self.skipped) > 1 else "",
                len(self.records),
            )
        if data and not data.endswith(b"\n"):
            with writing(self.path), self.path.open("ab") as f:
                f.write(b"\n")

    def _track(self, rec: dict[str, Any]) -> bool:
        self.records.append(rec)
        better = self.best is None or rec["reward"] > self.best["reward"]
        if better:
            self.best = rec
        return better

    @property
    def episodes(self) -> int:
        return len(self.records)

    def follow(self, total: int, desc: str, progress: bool, replay: int = 0) -> None:
        """Show a progress bar up to ``total`` episodes, and pass over the next ``replay`` episodes: a resumed
        deterministic searcher plays again the episodes it already recorded (its scorer answers them from the cache)."""
        self.replay = replay
        self.bar = tqdm(total=total, initial=self.episodes, desc=desc, unit="ep", disable=not progress)

    def close(self) -> None:
        """Close the progress bar, if any."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __call__(self, info: dict[str, Any]) -> None:
        if self.replay > 0:
            self.replay -= 1
            self._mark = time.perf_counter()  # re-played episodes are not new search time
            return
        rec = {
            "episode": self.episodes + 1,
            "reward": info["reward"],
            "accuracy": info["accuracy"],
            "macs_ratio": info["macs_ratio"],
            "macs_ratio_measured": info.get("macs_ratio_measured", info["macs_ratio"]),
            "latency_ratio": None if math.isnan(info["latency_ratio"]) else info["latency_ratio"],
            "target": info["target"],
            "ratios": [round(r, 5) for r in info["ratios"]],
            "eval_seconds": round(info["eval_seconds"], 3),
            # wall time since the previous episode ended (agent updates included): summed over records it is the
            # search's cost across resumed sessions
            "wall_seconds": round(time.perf_counter() - self._mark, 3),
            "cached": info["cached"],
            "plan": info["plan"],
        }
        if self.budget == "params":  # what a parameter budget (weight-level plans) counts
            rec["budget_cost"] = round(float(info["budget_cost"]), 6)
        for key in ("model", "dense_accuracy", "uniform_accuracy"):  # several models, relative rewards
            if key in info:
                rec[key] = info[key]
        if len(info.get("metrics") or {}) > 1:  # a metric that returned several numbers (e.g. F1 and accuracy)
            rec["metrics"] = dict(info["metrics"])
        line = json.dumps(json_safe(rec), allow_nan=False) + "\n"
        with writing(self.path), self.path.open("a") as f:
            f.write(line)
        self._mark = time.perf_counter()
        self.last = rec
        improved = self._track(rec)
        if improved:
            best = {
                **rec["plan"],
                "metrics": {
                    k: rec[k]
                    for k in (
                        "reward",
                        "accuracy",
                        "macs_ratio",
                        "macs_ratio_measured",
                        "latency_ratio",
                        "target",
                        "episode",
                        "budget_cost",
                    )
                    if k in rec
                },
            }
            text = json.dumps(json_safe(best), indent=1, allow_nan=False)
            atomic_write_text(self.run_dir / "best_plan.json", text + "\n")
        if self.writer is not None:
            step = rec["episode"]
            for key in ("accuracy", "macs_ratio", "reward"):
                self.writer.add_scalar(f"search/{key}", rec[key], step)
            if rec["latency_ratio"] is not None:
                self.writer.add_scalar("search/latency_ratio", rec["latency_ratio"], step)
            for key, value in (rec.get("metrics") or {}).items():  # e.g. the worst class's drop, macro-F1
                if isinstance(value, int | float) and math.isfinite(value):
                    self.writer.add_scalar(f"search/metrics/{key}", value, step)
            self.writer.add_scalar("search/best_reward", self.best["reward"], step)
            self.writer.add_scalar("search/best_accuracy", self.best["accuracy"], step)
            for tag, image in (("search/best_plan", self.best_plan_image()), ("search/scatter", self.scatter_image())):
                if image is not None:
                    self.writer.add_image(tag, image, step, dataformats="HWC")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(best=f"{self.best['accuracy']:.2f}%", last=f"{rec['accuracy']:.2f}%")

    def wall_seconds(self) -> float:
        """Search wall time over all sessions (records written before wall times were kept count as 0)."""
        return sum(r.get("wall_seconds", 0.0) for r in self.records)

    def best_plan_image(self) -> Any | None:
        """The best plan's profile as an HxWx3 array when the best changed since the last drawing and at least
        ``PROFILE_EVERY`` episodes passed (the final best is drawn at the end of the search); else ``None``."""
        best = self.best
        if self.structure is None or best is None or best["episode"] == self._drawn_best:
            return None
        if self.episodes - self._drawn_at < PROFILE_EVERY:
            return None
        self._drawn_best, self._drawn_at = best["episode"], self.episodes
        fig = figures.plan_profile_figure(
            Plan.from_dict(best["plan"]),
            self.structure,
            title=f"{self.run_dir.name}: best plan (episode {best['episode']})",
            metrics=outputs.search_metrics(best),
        )
        return figures.to_hwc(fig)

    def scatter_image(self) -> Any | None:
        """The search scatter so far as an HxWx3 array every ``SCATTER_EVERY`` episodes, else ``None``."""
        if not self.records or self.episodes % SCATTER_EVERY:
            return None
        last = self.records[-1]
        fig = figures.search_scatter_figure(
            self.records,
            target=last["target"],
            budget=self.budget,
            title=f"{self.run_dir.name}: {self.episodes} evaluated plans",
        )
        return figures.to_hwc(fig)
