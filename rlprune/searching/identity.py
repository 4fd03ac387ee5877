"""What a search run is and what a resume may change: the config's sections, the searcher and the checkpoint
weights (``search.json``), and the request key a cached search is reused by."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from rlprune.config import SearchConfig
from rlprune.envs.features import FEATURE_VERSION
from rlprune.errors import RLPruneError
from rlprune.evaluation.scorer import SCORING_VERSION
from rlprune.io.files import read_json
from rlprune.io.rundir import RunDir
from rlprune.io.safe import read_yaml_file

# what a resume may change in the agent section: run more episodes, save the agent at another interval
RESUMABLE_AGENT_KEYS = ("episodes", "checkpoint_every")


IDENTITY = "search.json"  # who searched, on which weights: what a resume must share beyond the config's sections


def weights_hashes(cfg: SearchConfig) -> list[str | None]:
    """The sha256 of each checkpoint's weights (a path names a file, not its contents; a scorer search has none).
    A checkpoint not there is None: a search given its scorer never reads it, and one that needs it says so when
    it loads it."""
    from rlprune.io.checkpoint import checkpoint_paths, read_meta

    paths = cfg.checkpoints if cfg.checkpoints is not None else [cfg.checkpoint] if cfg.checkpoint else []
    return [read_meta(p).get("weights_sha256") if checkpoint_paths(p)[1].is_file() else None for p in paths]


def prepare_run(cfg: SearchConfig, run_dir: Path, resume: bool, searcher: str | None = None) -> dict[str, Any]:
    """Refuse to start over a finished search, or to resume one with settings that would score plans differently,
    search them with another agent or seed, or on other weights under the same checkpoint path.

    :returns: the run's identity (searcher, weights hashes), to be written as ``search.json`` once the run exists.
    """
    identity = {
        "searcher": searcher or cfg.agent.algorithm,
        "weights_sha256": weights_hashes(cfg),
        "scoring": SCORING_VERSION,
    }
    run = RunDir(run_dir, "search run directory")
    if (run_dir / "episodes.jsonl").is_file() and not resume:
        raise RLPruneError(f"{run_dir}: a search already ran here", fix="resume_or_rename")
    saved_path = run_dir / "config.yaml"
    if resume and saved_path.is_file():
        # Recorded accuracies are only comparable with new ones if plans are scored and budgeted the same way.
        saved = read_yaml_file(saved_path) or {}
        # defaults filled in: a config saved before a new key existed compares by what it meant (one that does not
        # validate is compared as written, and a section that differs is refused below)
        with contextlib.suppress(ValueError):
            saved = SearchConfig.model_validate(saved).model_dump(mode="json")
        now = cfg.model_dump(mode="json")
        sections = ["checkpoint", "checkpoints", "data_root", "env", "proxy", "latency", "prune", "seed", "agent"]
        for side in (saved, now):
            if isinstance(side.get("agent"), dict):
                side["agent"] = {k: v for k, v in side["agent"].items() if k not in RESUMABLE_AGENT_KEYS}
        if now.get("pre_pruned") or saved.get("pre_pruned"):
            sections += ["pre_pruned"]  # the copies are models of the run, cut by its seed
            for side in (saved, now):  # how often a copy is drawn is not how it is scored
                if isinstance(side.get("pre_pruned"), dict):
                    side["pre_pruned"] = {k: v for k, v in side["pre_pruned"].items() if k != "weight"}
        run.check_same({k: saved.get(k) for k in sections}, {k: now.get(k) for k in sections}, what="config")
    if resume and (run_dir / IDENTITY).is_file():
        saved_identity = run.read_json(IDENTITY, "search identity")
        saved_identity = saved_identity if isinstance(saved_identity, dict) else {}
        keys = ("searcher", "weights_sha256", "scoring")
        run.check_same(
            {k: saved_identity.get(k) for k in keys},
            {k: identity[k] for k in keys},
            what="agent or searcher, checkpoint weights or scoring",
        )
    return identity


def record_identity(run_dir: Path, identity: dict[str, Any]) -> None:
    """Write ``search.json`` (see :func:`prepare_run`) beside the resolved config."""
    RunDir(run_dir).write_json(IDENTITY, identity)


def search_request(cfg: SearchConfig, searcher: str | None) -> dict[str, Any]:
    """What decides a search's result: the config (less where it is written and the episode count, which a resume
    may extend), the searcher and the checkpoint's weights hash (a path names a file, not its contents)."""
    config = cfg.model_dump(mode="json", exclude={"name": True, "output_dir": True, "agent": {"episodes"}})
    hashes = weights_hashes(cfg)
    single = hashes[0] if hashes else None
    return {**config, "searcher": searcher, "weights_sha256": hashes if cfg.checkpoints is not None else single}


def resumed_features(run_dir: Path, fresh: int = FEATURE_VERSION) -> int:
    """The feature set a resumed search's agent was built for (its saved policy's), so that an agent saved by an
    older rlprune keeps its input size; ``fresh`` (the set a new run of this config observes: the current one, or
    its starting policy's) when nothing was saved yet."""
    path = run_dir / "policy.json"
    if not path.is_file():
        return fresh
    version = read_json(path, "policy metadata").get("feature_version", fresh)
    return version if isinstance(version, int) else fresh


__all__ = [
    "IDENTITY",
    "RESUMABLE_AGENT_KEYS",
    "prepare_run",
    "record_identity",
    "resumed_features",
    "search_request",
    "weights_hashes",
]
