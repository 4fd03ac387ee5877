"""``rlprune run`` in iterative rounds: each round prunes the model the previous one left, at a target relative to
the dense model's MACs, and a killed run resumes at its first unfinished round."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import pretrain_tiny

from rlprune.config import SearchConfig, validate
from rlprune.cost.macs import count_macs
from rlprune.errors import RLPruneError
from rlprune.io.checkpoint import load_checkpoint
from rlprune.jobs import rounds as pipeline_rounds
from rlprune.jobs.pipeline import run_job
from rlprune.models import build_model
from rlprune.pruning import Plan, analyze, prune
from rlprune.pruning.rounds import compose_plans

EXAMPLE = torch.zeros(1, 3, 32, 32)


def _config(tmp: Path, checkpoint: Path | str, name: str, **sections: Any) -> SearchConfig:
    raw = {
        "name": name,
        "checkpoint": str(checkpoint),
        "output_dir": str(tmp / "runs"),
        "env": {"target": 0.5, "reward": "accuracy"},  # (the latency-aware default adds a lookup table per round)
        "proxy": {"recal_batches": 2, "recal_batch_size": 8, "finetune_steps": 0},
        "agent": {"episodes": 2, "hyperparams": {"n_steps": 24, "batch_size": 12}},
        "finetune": {"epochs": 1, "batch_size": 16, "steps_per_epoch": 2},
        **sections,
    }
    return validate(SearchConfig, raw, "test")


def test_rounds_config_forms_and_errors(tmp_path: Path) -> None:
    listed = _config(tmp_path, "unused", "a", rounds=[0.8, 0.65, 0.5])
    assert listed.rounds is not None and listed.rounds.schedule(0.5) == [0.8, 0.65, 0.5]
    poly = _config(tmp_path, "unused", "b", rounds={"count": 3})
    assert poly.rounds is not None
    sched = poly.rounds.schedule(0.5)
    assert sched[-1] == pytest.approx(0.5) and sched == sorted(sched, reverse=True) and sched[0] < 1.0
    assert _config(tmp_path, "unused", "c").rounds is None  # one-shot unless asked
    for rounds, env, match in (
        ([0.8, 0.6], {"target": 0.5}, "last round"),
        ([0.5, 0.6], {"target": 0.6}, "decreasing"),
        ({"targets": [0.5], "count": 2}, {"target": 0.5}, "either"),
        ({"count": 2}, {"target": [0.4, 0.6]}, "single MACs target"),
        ({"count": 2}, {"target": 0.5, "budget": "latency"}, "single MACs target"),
    ):
        with pytest.raises(RLPruneError, match=match):
            _config(tmp_path, "unused", "d", rounds=rounds, env=env)


def test_composed_plan_rebuilds_a_model_pruned_twice() -> None:
    torch.manual_seed(0)
    dense = build_model("resnet20", num_classes=3, width=8).eval()
    structure = analyze(dense, EXAMPLE)
    once, first = prune(dense, Plan.from_ratios(structure, [0.25] * len(structure.units)), EXAMPLE)
    second_structure = analyze(once.eval(), EXAMPLE)
    twice, second = prune(once, Plan.from_ratios(second_structure, [0.5] * len(second_structure.units)), EXAMPLE)
    composed = compose_plans(first, second, structure)
    composed.check(structure, "composed")
    rebuilt, _ = prune(dense, composed, EXAMPLE)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in twice.state_dict().items()}
    # the twice-pruned model's weights are the dense model's at the composed indices (nothing trained in between)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), twice.eval()(x), atol=1e-5)
    with pytest.raises(RLPruneError, match="another model"):
        compose_plans(second, first, structure)


def test_rounds_resume_after_a_crash_without_redoing_a_round(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = pretrain_tiny(image_folder, tmp_path, width=8, val_size=12)
    cfg = _config(tmp_path, checkpoint, "it", rounds=[0.75, 0.5])
    run_dir = tmp_path / "runs" / "it"
    calls: list[str] = []
    crash = True
    real = pipeline_rounds.finetune_plan

    def finetune_spy(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(args[4].parent.name)
        if crash and args[4].parent.name == "round_2":
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline_rounds, "finetune_plan", finetune_spy)
    with pytest.raises(RuntimeError, match="killed"):
        run_job(cfg, progress=False)
    state = json.loads((run_dir / "rounds.json").read_text())
    assert [r["round"] for r in state["done"]] == [1]
    first_report = run_dir / "round_1" / "pruned" / "report.json"
    first_episodes = (run_dir / "round_1" / "episodes.jsonl").read_text()
    stamp = first_report.stat().st_mtime_ns
    with pytest.raises(RLPruneError, match="already ran"):
        run_job(cfg, progress=False)  # a run in rounds is continued only with --resume
    other_lr = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"lr": cfg.finetune.lr / 2})})
    with pytest.raises(RLPruneError, match=r"another rounds schedule \(settings.finetune.lr: 0.02 -> 0.01\)"):
        run_job(other_lr, resume=True, progress=False)  # round 2 would not be made as round 1 was
    crash = False
    out = run_job(cfg, resume=True, progress=False)
    assert calls == ["round_1", "round_2", "round_2"]  # round 1 was not fine-tuned again ...
    assert first_report.stat().st_mtime_ns == stamp
    assert (run_dir / "round_1" / "episodes.jsonl").read_text() == first_episodes  # ... nor searched again
    assert out.rounds is not None
    assert [r.round for r in out.rounds] == [1, 2]
    assert [r.target for r in out.rounds] == [0.75, 0.5]

    # each round lands at its target relative to the *dense* model, and is reported against it
    dense, _ = load_checkpoint(checkpoint)
    dense_macs = count_macs(dense, (3, 32, 32))
    for rec in out.rounds:
        model, meta = load_checkpoint(run_dir / rec.checkpoint)  # rebuilt from the dense architecture
        assert Plan.from_dict(meta["plan"]).fingerprint == analyze(dense.eval(), EXAMPLE).fingerprint
        ratio = count_macs(model, (3, 32, 32)) / dense_macs
        assert ratio == pytest.approx(rec.macs_ratio, abs=1e-4)
        assert rec.target - 0.03 <= ratio <= rec.target + 0.01
        report = json.loads((run_dir / rec.checkpoint).with_name("report.json").read_text())
        assert report["dense"]["macs"] == dense_macs
    assert out.pruned_model == str(run_dir / "round_2" / "pruned" / "model.json")
    assert "## Rounds" in out.report_md and (run_dir / "rounds.md").is_file()
    # the second round's search saw the pruned model and a target relative to it
    second = json.loads((run_dir / "round_2" / "summary.json").read_text())
    assert second["best"]["target"] == pytest.approx(
        0.5 * dense_macs / count_macs(load_checkpoint(run_dir / "round_1" / "pruned" / "model.json")[0], (3, 32, 32)),
        rel=0.02,
    )

    # a learned policy applied per round instead of searching (the first round's policy)
    by_policy = _config(tmp_path, checkpoint, "pol", rounds={"targets": [0.7, 0.5], "policy": str(run_dir / "round_1")})
    with pytest.raises(RLPruneError, match="outside what the policy was trained for"):
        run_job(by_policy, progress=False)  # trained at 0.75 only: a round target of 0.7 needs force
    out = run_job(by_policy, progress=False, resume=True, force=True)
    pol_dir = tmp_path / "runs" / "pol"
    assert out.rounds is not None
    assert [r.round for r in out.rounds] == [1, 2] and out.rounds[0].proxy_val_accuracy is None
    assert (pol_dir / "round_2" / "plan.json").is_file() and not (pol_dir / "round_2" / "episodes.jsonl").exists()
    assert 0.47 <= out.rounds[1].macs_ratio <= 0.51


def test_a_rounds_record_resumes_only_with_its_own_schedule(tmp_path: Path) -> None:
    """The rounds record holds the schedule it was made with; another one (or a record without every setting of the
    current schedule, as rlprune 0.2 wrote) is refused, naming the first difference."""
    from rlprune.pruning.rounds import finished_rounds

    state = tmp_path / "rounds.json"
    schedule = {"targets": [0.8, 0.5], "policy": None, "dense_weights_sha256": "a" * 64, "settings": {"seed": 0}}
    state.write_text(json.dumps({**schedule, "done": [{"round": 1}]}))
    assert finished_rounds(state, schedule) == [{"round": 1}]
    with pytest.raises(RLPruneError, match=r"another rounds schedule \(targets: \[0.8, 0.5\] -> \[0.7, 0.5\]\)"):
        finished_rounds(state, {**schedule, "targets": [0.7, 0.5]})
    state.write_text(json.dumps({"targets": [0.8, 0.5], "policy": None, "done": [{"round": 1}]}))
    with pytest.raises(RLPruneError, match="dense_weights_sha256: None"):
        finished_rounds(state, schedule)
