"""Reusable results are reused only when the request that produced them is the same one (config, plan, checkpoint
weights, recipe, seed, code version), and results files say when their rows were measured at different commits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _results import write_results
from synthetic import PreferenceScorer

import rlprune.io.provenance
import rlprune.jobs.apply
import rlprune.searching.api
import rlprune.searching.cache
from rlprune.config import FinetuneConfig, SearchConfig
from rlprune.cost.budget import uniform_plan
from rlprune.data import load_splits
from rlprune.errors import RLPruneError
from rlprune.io.checkpoint import save_checkpoint
from rlprune.io.provenance import (
    environment,
    is_current,
    provenance,
    request_sha256,
    source_sha256,
    tensors_sha256,
)
from rlprune.jobs.apply import load_dense
from rlprune.jobs.finetune import finetune_plan
from rlprune.models import build_model


def _other_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the rlprune source tree had been edited."""
    edited = "0" * 64
    assert source_sha256() != edited
    monkeypatch.setattr(rlprune.io.provenance, "source_sha256", lambda: edited)


def test_request_hash_covers_the_request_and_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    request = {"plan": "abc", "dense": "f" * 64, "epochs": 2, "seed": 0}
    first = request_sha256(request)
    assert first == request_sha256(dict(reversed(request.items())))  # key order is not part of the request
    for changed in ({"epochs": 3}, {"seed": 1}, {"plan": "abd"}, {"dense": "e" * 64}):
        assert request_sha256({**request, **changed}) != first, changed
    record = provenance(request)
    assert record["request_sha256"] == first and record["request"] == request
    assert record["commit"] == environment()["commit"] and record["date"].endswith("Z")
    assert record["code"]["source_sha256"] == source_sha256() and len(source_sha256()) == 64
    assert is_current({"provenance": record}, request) and not is_current(
        {"provenance": record}, {**request, "seed": 1}
    )
    assert not is_current({"episodes": 3}, request) and not is_current(None, request)  # from before provenance
    _other_code(monkeypatch)
    assert request_sha256(request) != first and not is_current({"provenance": record}, request)


def test_tensors_hash_tells_weights_apart() -> None:
    torch.manual_seed(0)
    a = build_model("resnet20", width=4)
    b = build_model("resnet20", width=4)
    assert tensors_sha256(a) != tensors_sha256(b)
    b.load_state_dict(a.state_dict())
    assert tensors_sha256(a) == tensors_sha256(b)


def test_results_file_with_rows_from_two_commits_is_refused(tmp_path: Path) -> None:
    env = {**environment(), "commit": "new1234"}
    old = {"accuracy": 71.0, "provenance": {**provenance({"x": 1}), "commit": "old5678", "date": "2026-01-01T00:00Z"}}
    fresh = {"accuracy": 72.0, "provenance": {**provenance({"x": 2}), "commit": "new1234"}}
    with pytest.raises(SystemExit, match=r"measured at 2 commits \(old5678: /rows/a; new1234: \(this run\), /rows/b\)"):
        write_results(tmp_path / "mixed", {"rows": {"a": old, "b": fresh}, "environment": env}, "# table")
    assert not list(tmp_path.iterdir())  # nothing half-written
    # a report reused from before provenance existed has an unknown commit, which is a mix too
    legacy = {"accuracy": 70.0, "environment": {"commit": "?"}}
    with pytest.raises(SystemExit, match="measured at 2 commits"):
        write_results(tmp_path / "legacy", {"rows": [legacy], "environment": env}, "# t")
    js, md = write_results(tmp_path / "one", {"rows": {"b": fresh}, "environment": env}, "# table")
    assert md.read_text().startswith("# table\n")
    assert json.loads(js.read_text())["measured_at"] == {"new1234": ["(this run)", "/rows/b"]}


def test_benchmark_cache_keys_hold_the_code_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cell measured by other package code is measured again: the key changes with the source hash."""
    from _results import request_key

    before = request_key({"checkpoint": "a.json", "weights_sha256": "abc", "budget": 0.5})
    assert before == request_key({"checkpoint": "a.json", "weights_sha256": "abc", "budget": 0.5})
    assert before != request_key({"checkpoint": "a.json", "weights_sha256": "abd", "budget": 0.5})
    _other_code(monkeypatch)
    assert before != request_key({"checkpoint": "a.json", "weights_sha256": "abc", "budget": 0.5})


@pytest.fixture()
def dense_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=3, width=8)
    return save_checkpoint(
        tmp_path / "dense", model, {"model": "resnet20", "model_kwargs": {"num_classes": 3, "width": 8}}
    )


def _search_cfg(tmp_path: Path, checkpoint: Path, episodes: int, **proxy: object) -> SearchConfig:
    return SearchConfig(
        name="s",
        checkpoint=str(checkpoint),
        output_dir=str(tmp_path / "runs"),
        agent={"episodes": episodes},
        proxy={"recal_batches": 2, **proxy},
    )


def test_complete_search_reuses_only_the_same_request(
    tmp_path: Path, dense_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, structure = load_dense(str(dense_checkpoint))
    calls: list[int] = []
    real = rlprune.searching.api.run_search

    def run_search(cfg: SearchConfig, **kwargs: object) -> object:
        calls.append(cfg.agent.episodes)
        return real(cfg, scorer=PreferenceScorer(structure, {0, 3}), **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(rlprune.searching.cache, "run_search", run_search)
    run = tmp_path / "runs" / "s"

    def complete(episodes: int, searcher: str = "random", **proxy: object) -> dict:
        cfg = _search_cfg(tmp_path, dense_checkpoint, episodes, **proxy)
        return rlprune.searching.cache.complete_search(cfg, searcher=searcher, progress=False)

    first = rlprune.searching.cache.complete_search(
        _search_cfg(tmp_path, dense_checkpoint, 3), searcher="random", progress=False
    )
    assert calls == [3] and first.episodes == 3
    assert json.loads((run / "summary.json").read_text())["provenance"] == first.provenance
    # the same request: the summary comes back, nothing runs
    again = rlprune.searching.cache.complete_search(
        _search_cfg(tmp_path, dense_checkpoint, 3), searcher="random", progress=False
    )
    assert again == first and calls == [3]
    # more episodes of the same request: the run is resumed, not redone
    more = complete(5)
    assert calls == [3, 5] and more.episodes == 5 and len((run / "episodes.jsonl").read_text().splitlines()) == 5
    assert not list(run.parent.glob("s.stale-*"))
    # another config under the same name: never the old summary; the old run is kept aside, the search runs again
    redone = complete(5, recal_batches=3)
    assert calls == [3, 5, 5] and redone.provenance["request"]["proxy"]["recal_batches"] == 3
    assert len(list(run.parent.glob("s.stale-*"))) == 1
    assert len((run / "episodes.jsonl").read_text().splitlines()) == 5  # a fresh run, not 5 more
    # another searcher, or other code: searched again too
    complete(5, "evolution", recal_batches=3)
    assert calls == [3, 5, 5, 5]
    _other_code(monkeypatch)
    complete(5, "evolution", recal_batches=3)
    assert calls == [3, 5, 5, 5, 5]


def test_finetune_report_is_reused_only_for_the_same_request(
    tmp_path: Path, dense_checkpoint: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rlprune.training.engine as engine

    dense, meta, structure = load_dense(str(dense_checkpoint))
    splits = load_splits("imagefolder", image_folder, val_size=12)
    plan = uniform_plan(structure, 0.5)
    out = tmp_path / "ft"
    steps: list[int] = []
    loss = engine.distillation_loss
    monkeypatch.setattr(engine, "distillation_loss", lambda *a, **k: steps.append(1) or loss(*a, **k))

    def ft(steps_per_epoch: int | None = None, **kw: object) -> dict:
        recipe = FinetuneConfig(epochs=1, batch_size=16, steps_per_epoch=steps_per_epoch)
        args = {"progress": False, "latency_batches": (1,), "reuse": True, **kw}
        return finetune_plan(dense, meta, plan, splits, out, recipe, **args)  # type: ignore[arg-type]

    first = ft(steps_per_epoch=1)
    full = len(splits.train) // 16  # steps in a whole epoch (the last partial batch is dropped)
    assert full > 1 and len(steps) == 1  # steps_per_epoch caps the epoch
    request = first.provenance["request"]
    assert request["plan"] == plan.key() and request["dense"] == meta["weights_sha256"] and request["epochs"] == 1
    assert json.loads((out / "report.json").read_text())["provenance"] == first.provenance
    assert ft(steps_per_epoch=1) == first and len(steps) == 1  # same request: reused, nothing trained
    second = ft()  # the whole epoch: another request, measured again and the old report replaced
    assert len(steps) == 1 + full and second.provenance["request_sha256"] != first.provenance["request_sha256"]
    assert json.loads((out / "report.json").read_text())["provenance"] == second.provenance
    assert not list(tmp_path.glob(".ft*"))  # nothing half-written beside it
    _other_code(monkeypatch)
    ft()
    assert len(steps) == 1 + 2 * full  # other code: measured again
    with pytest.raises(RLPruneError, match="exists and is not an empty directory"):
        ft(reuse=False)  # without reuse a finished report is never overwritten


def test_steps_per_epoch_is_validated() -> None:
    from rlprune.config import FinetuneConfig, TrainConfig

    for bad in (0, -3):
        with pytest.raises(ValueError, match="steps_per_epoch"):
            FinetuneConfig(steps_per_epoch=bad)
        with pytest.raises(ValueError, match="steps_per_epoch"):
            TrainConfig(steps_per_epoch=bad)
    assert FinetuneConfig().steps_per_epoch is None and TrainConfig(steps_per_epoch=5).steps_per_epoch == 5


def test_the_source_hash_covers_every_module_of_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An edit anywhere in rlprune/ (not only beside the module that computes the hash) is another code version."""
    import shutil

    package = Path(rlprune.__file__).resolve().parent
    assert package == rlprune.io.provenance.PACKAGE_DIR
    copy = tmp_path / "rlprune"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(rlprune.io.provenance, "PACKAGE_DIR", copy)
    digest = source_sha256.__wrapped__  # the package's own value is cached for the process
    before = digest()
    assert before == source_sha256()  # the copy is the package
    for module in ("searching/baselines.py", "pruning/cut.py", "envs/episode.py"):
        path = copy / module
        original = path.read_bytes()
        path.write_bytes(original + b"\n# edited\n")
        assert digest() != before, module
        path.write_bytes(original)
    assert digest() == before
