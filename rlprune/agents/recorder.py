"""Keeps the record of a search: every evaluated plan in ``episodes.jsonl``, the best plan in ``best_plan.json``,
and TensorBoard scalars for searchers that are not SB3 agents. Reloading the file on resume loses no episode."""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Any

from rlprune.config import atomic_write_text


class SearchRecorder:
    """Called by the environment at the end of every episode (``env.on_episode``).

    :param run_dir: the run directory; ``episodes.jsonl`` is appended to, ``best_plan.json`` replaced.
    :param writer: an optional TensorBoard ``SummaryWriter`` for searchers without an SB3 logger; with it the
        recorder also logs the best plan's ratio chart and drives ``bar`` (a progress bar the caller may attach).
    """

    def __init__(self, run_dir: Path, writer: Any | None = None) -> None:
        self.run_dir = run_dir
        self.path = run_dir / "episodes.jsonl"
        self.writer = writer
        self.bar: Any | None = None
        self._mark = time.perf_counter()
        self.records: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.started = time.perf_counter()
        self.last: dict[str, Any] | None = None
        self.replay = 0  # episodes to pass over (a resumed deterministic searcher re-plays what is recorded)
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    try:
                        self._track(json.loads(line))
                    except json.JSONDecodeError:
                        break  # a line cut short by a crash: everything before it is kept
            # Rewrite without a torn tail so appends start on a clean line.
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def _track(self, rec: dict[str, Any]) -> bool:
        self.records.append(rec)
        better = self.best is None or rec["reward"] > self.best["reward"]
        if better:
            self.best = rec
        return better

    @property
    def episodes(self) -> int:
        return len(self.records)

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
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
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
                    )
                },
            }
            atomic_write_text(self.run_dir / "best_plan.json", json.dumps(best, indent=1) + "\n")
        if self.writer is not None:
            step = rec["episode"]
            for key in ("accuracy", "macs_ratio", "reward"):
                self.writer.add_scalar(f"search/{key}", rec[key], step)
            if rec["latency_ratio"] is not None:
                self.writer.add_scalar("search/latency_ratio", rec["latency_ratio"], step)
            self.writer.add_scalar("search/best_reward", self.best["reward"], step)
            self.writer.add_scalar("search/best_accuracy", self.best["accuracy"], step)
            if improved:
                png = ratio_plot_png(self.best["ratios"], f"best plan, episode {self.best['episode']}")
                self.writer.add_image("search/best_plan", png_to_hwc(png), step, dataformats="HWC")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(best=f"{self.best['accuracy']:.2f}%", last=f"{rec['accuracy']:.2f}%")

    def wall_seconds(self) -> float:
        """Search wall time over all sessions (records written before wall times were kept count as 0)."""
        return sum(r.get("wall_seconds", 0.0) for r in self.records)


def png_to_hwc(png: bytes) -> Any:
    """PNG bytes as an HxWx3 uint8 array (what TensorBoard image summaries take)."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def ratio_plot_png(ratios: list[float], title: str) -> bytes:
    """A bar chart of per-layer pruning ratios as PNG bytes (drawn with Pillow; no plotting dependency)."""
    from PIL import Image, ImageDraw

    w, h, pad = max(320, 24 * len(ratios) + 60), 240, 30
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((pad, 5), title[:80], fill="black")
    d.line([(pad, h - pad), (w - 10, h - pad)], fill="black")
    d.line([(pad, pad), (pad, h - pad)], fill="black")
    bar = (w - pad - 20) / max(1, len(ratios))
    for i, r in enumerate(ratios):
        x0 = pad + 5 + i * bar
        y0 = h - pad - r * (h - 2 * pad)
        d.rectangle([x0, y0, x0 + bar * 0.7, h - pad], fill=(70, 110, 200))
    for frac in (0.0, 0.5, 1.0):
        y = h - pad - frac * (h - 2 * pad)
        d.text((2, y - 5), f"{frac:.1f}", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
