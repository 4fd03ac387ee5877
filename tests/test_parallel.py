"""Scale-out on Ray (``search.workers``): same results for any worker count, no record lost to a dying actor.

One local Ray instance serves the whole module (starting one costs seconds). The scorers below are handed to the
actors by pickling, so they live at module level (the actors import this module by name).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import pretrain_tiny
from synthetic import PreferenceScorer

from rlprune.cli import main
from rlprune.config import SearchConfig
from rlprune.errors import RLPruneError
from rlprune.models import build_model
from rlprune.pruning import Plan, analyze
from rlprune.searching.api import run_search

if os.environ.get("RLPRUNE_REQUIRE_DATA") == "1":
    import ray  # every test must run: a missing Ray fails collection instead of skipping the module
else:
    ray = pytest.importorskip("ray")

PROTECT = {0, 3, 6}


@pytest.fixture(scope="module")
def structure():
    return analyze(build_model("resnet20", width=4).eval(), torch.zeros(1, 3, 32, 32))


@pytest.fixture(scope="module", autouse=True)
def local_ray(tmp_path_factory: pytest.TempPathFactory):
    """One local Ray instance for the module; actors see the test modules and an isolated dataset cache."""
    if ray.is_initialized():
        ray.shutdown()
    cache = tmp_path_factory.mktemp("ray-cache")
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        object_store_memory=128 * 1024**2,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, sys.path)), "RLPRUNE_CACHE": str(cache)}},
    )
    yield
    ray.shutdown()


class DyingScorer(PreferenceScorer):
    """Kills the process it runs in (an actor) on its first plan, once per marker file: a crash mid-evaluation."""

    def __init__(self, structure, protect: set[int], marker: str) -> None:
        super().__init__(structure, protect)
        self.marker = marker

    def __call__(self, plan: Plan):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(plan)


def _cfg(tmp_path: Path, name: str, episodes: int, **agent: object) -> SearchConfig:
    return SearchConfig(name=name, checkpoint="unused", output_dir=str(tmp_path), agent={"episodes": episodes, **agent})


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]


def _same(a: list[dict], b: list[dict]) -> None:
    """Same plans, scores, rewards and cache hits, episode by episode (timings aside)."""
    keys = ("episode", "ratios", "plan", "accuracy", "reward", "macs_ratio", "target", "cached")
    assert [{k: r[k] for k in keys} for r in a] == [{k: r[k] for k in keys} for r in b]


@pytest.mark.parametrize("searcher", ["random", "evolution"])
def test_baselines_give_the_same_plans_and_scores_for_1_and_2_workers(tmp_path: Path, structure, searcher: str) -> None:
    episodes = 20  # evolution: more than one generation of 16, so selection from parallel scores is exercised
    one = run_search(_cfg(tmp_path, "one", episodes), searcher=searcher, scorer=PreferenceScorer(structure, PROTECT))
    two = run_search(
        _cfg(tmp_path, "two", episodes), searcher=searcher, scorer=PreferenceScorer(structure, PROTECT), workers=2
    )
    _same(_records(tmp_path / "one"), _records(tmp_path / "two"))
    assert one.best == two.best and two.episodes == episodes
    assert yaml.safe_load((tmp_path / "two" / "config.yaml").read_text())["workers"] == 2
    best = json.loads((tmp_path / "two" / "best_plan.json").read_text())
    assert best["metrics"]["accuracy"] == max(r["accuracy"] for r in _records(tmp_path / "two"))


def test_ppo_with_2_workers_is_reproducible(tmp_path: Path, structure) -> None:
    runs = []
    for name in ("a", "b"):
        summary = run_search(
            _cfg(tmp_path, name, 8, hyperparams={"n_steps": 24, "batch_size": 16}),
            scorer=PreferenceScorer(structure, PROTECT),
            workers=2,
            progress=False,
        )
        runs.append(_records(tmp_path / name))
        assert summary.episodes == 8
        assert (tmp_path / name / "policy.safetensors").is_file()
        assert list((tmp_path / name / "tb").rglob("events.out.tfevents*"))
    _same(runs[0], runs[1])
    assert [r["episode"] for r in runs[0]] == list(range(1, 9))


def test_a_killed_actor_costs_no_record(tmp_path: Path, structure) -> None:
    marker = tmp_path / "actor-killed.pid"
    run_search(
        _cfg(tmp_path, "killed", 20),
        searcher="random",
        scorer=DyingScorer(structure, PROTECT, str(marker)),
        workers=2,
        progress=False,
    )
    assert marker.is_file()  # an actor did die mid-evaluation
    run_search(_cfg(tmp_path, "calm", 20), searcher="random", scorer=PreferenceScorer(structure, PROTECT))
    killed = _records(tmp_path / "killed")
    assert [r["episode"] for r in killed] == list(range(1, 21))  # none lost, none twice
    _same(killed, _records(tmp_path / "calm"))


class _Crash(Exception):
    pass


class CrashingScorer(PreferenceScorer):
    """Raises after ``after`` plans in its actor: the whole search stops, as when it is killed."""

    def __init__(self, structure, protect: set[int], after: int) -> None:
        super().__init__(structure, protect)
        self.after = after

    def __call__(self, plan: Plan):
        if self.calls >= self.after:
            raise _Crash
        return super().__call__(plan)


def test_a_stopped_parallel_search_resumes_as_today(tmp_path: Path, structure) -> None:
    cfg = _cfg(tmp_path, "run", 40)
    with pytest.raises(_Crash):
        run_search(cfg, searcher="random", scorer=CrashingScorer(structure, PROTECT, after=10), workers=2)
    first = _records(tmp_path / "run")
    assert 0 < len(first) < 40
    run_search(cfg, searcher="random", scorer=PreferenceScorer(structure, PROTECT), workers=2, resume=True)
    run_search(_cfg(tmp_path, "straight", 40), searcher="random", scorer=PreferenceScorer(structure, PROTECT))
    after = _records(tmp_path / "run")
    assert after[: len(first)] == first
    _same(after, _records(tmp_path / "straight"))


def test_real_proxy_scores_do_not_depend_on_the_thread_or_worker_count(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Actors build the proxy evaluator from the checkpoint path; the records of 1 thread, 2 threads and 2 workers
    (one thread each) are equal, plan by plan and score by score, with the proxy's SGD steps and on a CPU that
    reports native bf16 (``amp: auto`` scores in float32 there: bf16 sums depend on the thread count)."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    checkpoint = pretrain_tiny(image_folder, tmp_path, width=4, val_size=12, name="tiny")
    search = tmp_path / "search.yaml"
    search.write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "checkpoint": str(checkpoint),
                "output_dir": str(tmp_path / "runs"),
                "proxy": {"recal_batches": 2, "recal_batch_size": 8, "finetune_steps": 3},
                "agent": {"episodes": 4},
            }
        )
    )
    args = ["search", str(search), "--searcher", "random", "--quiet"]
    threads = torch.get_num_threads()
    try:
        assert main([*args, "--set", "name=one", "--set", "threads=1"]) == 0
        assert main([*args, "--set", "name=two", "--set", "threads=2"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert main([*args, "--set", "name=workers", "--workers", "2"]) == 0
    runs = tmp_path / "runs"
    one, two, workers = (_records(runs / name) for name in ("one", "two", "workers"))
    assert len(one) == 4 and all(0 <= r["accuracy"] <= 100 for r in one)
    _same(one, two)
    _same(one, workers)


def test_without_ray_more_workers_is_a_one_line_error(
    tmp_path: Path, structure, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(RLPruneError, match=r"pip install 'rlprune\[ray\]'"):
        run_search(_cfg(tmp_path, "x", 4), searcher="random", scorer=PreferenceScorer(structure, PROTECT), workers=2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "c", "checkpoint": "unused", "output_dir": str(tmp_path)}))
    assert main(["search", str(cfg), "--searcher", "random", "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "rlprune[ray]" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "c-random").exists()


def test_off_policy_agent_collects_from_2_environments(tmp_path: Path, structure) -> None:
    """DDPG's episode-reward replay buffer takes both environments' transitions (their episodes run in lockstep)."""
    summary = run_search(
        _cfg(tmp_path, "ddpg", 6, algorithm="ddpg", hyperparams={"learning_starts": 40}),
        scorer=PreferenceScorer(structure, PROTECT),
        workers=2,
        progress=False,
    )
    assert summary.episodes == 6
    assert [r["episode"] for r in _records(tmp_path / "ddpg")] == list(range(1, 7))
