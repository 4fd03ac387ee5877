"""Per-class metrics, the worst-class reward, int8 quantization and magnitude sparsity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rlprune.data import BatchLoader, load_splits
from rlprune.envs.rewards import Outcome, get_reward
from rlprune.errors import RLPruneError
from rlprune.evaluation.classes import (
    class_chart,
    class_metric,
    class_report,
    confusion_from_loader,
    confusion_matrix,
    evaluate_classes,
    worst_class_drop,
)
from rlprune.evaluation.proxy import ProxyEvaluator
from rlprune.models import build_model
from rlprune.pruning.sparsity import (
    budget_sparsity,
    load_sparse,
    nm_skipped,
    save_sparse,
    sparsify,
)


class FixedLogits(nn.Module):
    """Predicts the class stored in the input's first value (so a confusion matrix can be written by hand)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0].long(), 3).float()


def test_confusion_matrix_and_report_match_hand_computation() -> None:
    true = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    pred = [0, 0, 0, 1, 1, 1, 2, 2, 0, 0]
    loader = [(torch.tensor(pred[:6], dtype=torch.float32)[:, None], torch.tensor(true[:6]))]
    loader.append((torch.tensor(pred[6:], dtype=torch.float32)[:, None], torch.tensor(true[6:])))
    m = confusion_from_loader(FixedLogits(), loader, 3)
    assert m.tolist() == [[3, 1, 0], [0, 2, 1], [2, 0, 1]]
    rep = class_report(m, ["a", "b", "c"])
    # precision: a 3/5, b 2/3, c 1/2; recall: a 3/4, b 2/3, c 1/3
    p, r = [3 / 5, 2 / 3, 1 / 2], [3 / 4, 2 / 3, 1 / 3]
    f1 = [2 * pi * ri / (pi + ri) for pi, ri in zip(p, r, strict=True)]
    assert rep["accuracy"] == pytest.approx(60.0)
    for row, pi, ri, fi in zip(rep["per_class"], p, r, f1, strict=True):
        assert row["precision"] == pytest.approx(100 * pi) and row["recall"] == pytest.approx(100 * ri)
        assert row["f1"] == pytest.approx(100 * fi)
    assert rep["macro_f1"] == pytest.approx(100 * sum(f1) / 3)
    assert rep["worst_class"] == "c" and rep["worst_class_accuracy"] == pytest.approx(100 / 3)
    dense = class_report(np.array([[4, 0, 0], [0, 3, 0], [1, 0, 2]]), ["a", "b", "c"])
    drop = worst_class_drop(rep, dense)
    assert drop == {"worst_class_drop": pytest.approx(100 / 3), "worst_drop_class": "b"}


def test_class_report_edge_cases() -> None:
    rep = class_report(np.array([[2, 0], [0, 0]]))  # class 1 has no images: left out of worst and macro
    assert rep["worst_class"] == "0" and rep["macro_f1"] == pytest.approx(100.0)
    for bad in (np.zeros((2, 3)), np.zeros((2, 2)), -np.eye(2)):
        with pytest.raises(RLPruneError):
            class_report(bad)
    with pytest.raises(RLPruneError, match="labels"):
        confusion_from_loader(FixedLogits(), [(torch.zeros(1, 1), torch.tensor([5]))], 3)


def test_split_metrics_agree_with_evaluate_and_chart(image_folder: Path, tmp_path: Path) -> None:
    from rlprune.evaluation import evaluate

    splits = load_splits("imagefolder", image_folder, val_size=12)
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=3, width=4)
    rep = evaluate_classes(model, splits.test, splits.mean, splits.std, batch_size=7)
    ref = evaluate(model, splits.test, splits.mean, splits.std, batch_size=7)
    assert rep["accuracy"] == pytest.approx(ref["accuracy"]) and rep["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert np.array(rep["confusion"]).sum() == len(splits.test) == rep["images"]
    m = confusion_matrix(model, splits.test, splits.mean, splits.std)
    assert m.tolist() == rep["confusion"] and model.training  # eval mode restored to train
    metric = class_metric(splits.test, splits.mean, splits.std, dense=model)
    flat = metric(model)
    assert flat["worst_class_drop"] == 0.0 and "class_accuracy/circle" in flat
    png = class_chart({"dense": rep, "same": rep}, tmp_path / "c.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from rlprune.evaluation.classes import classes_section

    models = {"dense": model, "again": model}
    block, md = classes_section(models, splits.test, splits.mean, splits.std, tmp_path / "s.png")
    assert block["again"]["worst_class_drop"] == 0.0 and block["dense"]["macro_f1"] == pytest.approx(rep["macro_f1"])
    assert md.count("\n| ") == 2 and (tmp_path / "s.png").is_file()


def test_worst_class_reward_penalises_only_beyond_the_limit(image_folder: Path) -> None:
    reward = get_reward("accuracy_worst_class", weight=2.0)
    ok = Outcome(accuracy=80.0, macs_ratio=0.5, latency_ratio=0.5, macs=1, metrics={"worst_class_drop": 2.5})
    bad = Outcome(accuracy=80.0, macs_ratio=0.5, latency_ratio=0.5, macs=1, metrics={"worst_class_drop": 8.0})
    assert reward(ok) == pytest.approx(0.8) and reward(bad) == pytest.approx(0.8 - 2.0 * 5.0 / 100)
    with pytest.raises(RLPruneError, match="worst_class_drop"):
        reward(Outcome(accuracy=80.0, macs_ratio=0.5, latency_ratio=0.5, macs=1))
    # the built-in proxy provides the drop when asked, and the dense plan drops nothing
    splits = load_splits("imagefolder", image_folder, val_size=12)
    torch.manual_seed(0)
    proxy = ProxyEvaluator(
        build_model("resnet20", num_classes=3, width=4), splits, recal_batches=0, val_images=None, per_class=True
    )
    dense = proxy(proxy.plan([0.0] * len(proxy.structure.units)))
    assert dense.metrics["worst_class_drop"] == pytest.approx(0.0) and "macro_f1" in dense.metrics
    pruned = proxy(proxy.plan([0.5] * len(proxy.structure.units)))
    assert np.isfinite(pruned.metrics["worst_class_drop"]) and pruned.accuracy == pruned.metrics["accuracy"]
    # end to end: the environment hands the scorer's metrics to the reward
    from rlprune.envs.layer_pruning import LayerPruningEnv

    env = LayerPruningEnv(proxy, reward="accuracy_worst_class", reward_weight=100.0, target=0.5)
    env.reset(seed=0)
    done, reward, info = False, 0.0, {}
    while not done:
        _, reward, done, _, info = env.step(np.zeros(1, dtype=np.float32))
    drop = info["metrics"]["worst_class_drop"]
    assert reward == pytest.approx(info["accuracy"] / 100 - 100.0 * max(0.0, drop - 3.0) / 100)


def test_worst_class_reward_from_config_scores_per_class_and_resumes(image_folder: Path, tmp_path: Path) -> None:
    """``env.reward: accuracy_worst_class`` in a search config builds the proxy with per-class scoring (no hand-built
    evaluator), and a resumed search answers revisited plans with their recorded drop instead of raising."""
    import json

    from conftest import pretrain_tiny

    from rlprune.config import SearchConfig
    from rlprune.searching.api import run_search

    checkpoint = pretrain_tiny(image_folder, tmp_path, width=4, val_size=12, name="tiny")
    raw = {
        "name": "worst",
        "checkpoint": str(checkpoint),
        "output_dir": str(tmp_path / "runs"),
        "env": {"reward": "accuracy_worst_class", "reward_weight": 50.0},
        "proxy": {"recal_batches": 1, "recal_batch_size": 8, "finetune_steps": 0},
        "agent": {"episodes": 2},
    }
    run_search(SearchConfig(**raw), searcher="uniform", progress=False)
    records_path = tmp_path / "runs" / "worst" / "episodes.jsonl"
    first = [json.loads(line) for line in records_path.read_text().splitlines()]
    assert len(first) == 2
    for rec in first:
        drop = rec["metrics"]["worst_class_drop"]
        assert rec["reward"] == pytest.approx(rec["accuracy"] / 100 - 50.0 * max(0.0, drop - 3.0) / 100)
    events = b"".join(p.read_bytes() for p in (tmp_path / "runs" / "worst").rglob("events.out.tfevents*"))
    assert b"search/metrics/worst_class_drop" in events  # watched in TensorBoard, too
    # resumed: the uniform plan again, answered from the recorded episode (its metrics included)
    summary = run_search(SearchConfig(**{**raw, "agent": {"episodes": 3}}), searcher="uniform", resume=True)
    records = [json.loads(line) for line in records_path.read_text().splitlines()]
    assert summary.episodes == 3 and records[2]["cached"]
    assert records[2]["metrics"]["worst_class_drop"] == first[0]["metrics"]["worst_class_drop"]
    assert records[2]["reward"] == pytest.approx(first[0]["reward"])


# ------------------------------------------------------------------------------------------------ int8


def _trained_small(splits, steps: int = 30) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=3, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = BatchLoader(splits.train, 16, splits.mean, splits.std, shuffle=True, drop_last=True, seed=0)
    done = 0
    while done < steps:
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return model.eval()


def test_int8_round_trip_is_close_to_fp32_and_smaller(image_folder: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from rlprune.deploy.int8 import OnnxModel, int8_report, quantize_int8

    splits = load_splits("imagefolder", image_folder, val_size=12)
    model = _trained_small(splits)
    rep = int8_report(model, splits, tmp_path, calibration_batches=4, calibration_batch_size=16, threads=1)
    assert rep["bytes"]["int8"] < 0.5 * rep["bytes"]["fp32"]
    assert rep["agreement"]["top1_agreement"] >= 90.0 and rep["agreement"]["max_rel_logit_diff"] < 0.1
    assert rep["calibration"]["split"] == "train" and set(rep["int8"]) == {"val", "test", "latency_ms_ort"}
    assert abs(rep["int8"]["test"]["accuracy"] - rep["fp32"]["test"]["accuracy"]) <= 10.0
    assert all(v > 0 for v in rep["int8"]["latency_ms_ort"].values())
    loaded = OnnxModel(rep["files"]["int8"], threads=1)  # a fresh session from the file on disk
    test_x = next(iter(BatchLoader(splits.test, 64, splits.mean, splits.std)))[0]
    with torch.no_grad():
        ref = model(test_x)
    got = loaded(test_x)
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=0.1 * float(ref.max() - ref.min()))
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    with pytest.raises(RLPruneError, match="calibration"):
        quantize_int8(model, (3, 32, 32), tmp_path / "bad.onnx", [torch.zeros(2, 3, 16, 16)])
    with pytest.raises(RLPruneError, match=".onnx"):
        quantize_int8(model, (3, 32, 32), tmp_path / "bad.bin", [torch.zeros(2, 3, 32, 32)])


# ------------------------------------------------------------------------------------------------ sparsity


def test_unstructured_and_2to4_masks_survive_save_and_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=3, width=8)
    masks = sparsify(model, 0.8)
    w = model.layers[0].conv1.weight
    assert (w == 0).float().mean().item() == pytest.approx(0.8, abs=0.01)
    stats = masks.stats(model)
    assert stats["layer_sparsity"] == pytest.approx(0.8, abs=0.01) and stats["nonzero_ratio"] < 0.25
    dense_file = tmp_path / "dense.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dense_file))
    path = save_sparse(model, masks, tmp_path / "sparse.safetensors")
    assert path.stat().st_size < 0.35 * dense_file.stat().st_size
    fresh = build_model("resnet20", num_classes=3, width=8)
    loaded = load_sparse(fresh, path)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert all(torch.equal(loaded.masks[k], masks.masks[k]) for k in masks.masks)

    # fine-tuning with attached masks keeps the zeros (SGD with momentum and weight decay)
    loaded.attach(fresh)
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        opt.zero_grad()
        fresh(torch.randn(4, 3, 32, 32)).sum().backward()
        opt.step()
    loaded.detach()
    for name, mask in loaded.masks.items():
        weight = dict(fresh.named_modules())[name].weight
        assert torch.count_nonzero(weight[~mask]) == 0

    nm_model = build_model("resnet20", num_classes=3, width=8)
    nm = sparsify(nm_model, pattern="2:4")
    assert "conv1" in nm_skipped(nm_model) and "conv1" not in nm.masks  # 3x3x3 = 27 inputs: not a multiple of 4
    groups = nm_model.layers[0].conv1.weight.detach().reshape(-1, 4)
    assert ((groups != 0).sum(1) <= 2).all()
    back = load_sparse(build_model("resnet20", num_classes=3, width=8), save_sparse(nm_model, nm, tmp_path / "nm"))
    assert back.pattern == "2:4" and set(back.masks) == set(nm.masks)


def test_sparsity_budget_and_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=3, width=8)
    total = sum(p.numel() for p in model.parameters())
    per_layer = budget_sparsity(model, total // 4)
    sparsify(model, per_layer)
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    assert abs(nonzero - total // 4) <= 0.01 * total
    with pytest.raises(RLPruneError, match="budget"):
        budget_sparsity(model, 10)
    with pytest.raises(RLPruneError, match="pattern"):
        sparsify(model, pattern="2-4")
    with pytest.raises(RLPruneError, match="layer"):
        sparsify(model, {"nope": 0.5})
    (tmp_path / "x.safetensors").write_bytes(b"not a file")
    with pytest.raises(RLPruneError):
        load_sparse(model, tmp_path / "x.safetensors")
    masks = sparsify(model, 0.5)
    with pytest.raises(RLPruneError, match="match"):
        load_sparse(build_model("resnet20", num_classes=3, width=4), save_sparse(model, masks, tmp_path / "s"))


# ------------------------------------------------------------------------------------------------ rounds


def test_polynomial_schedule_and_rounds_resume(tmp_path: Path) -> None:
    from rlprune.pruning.rounds import iterative_sparsify, polynomial_schedule

    sched = polynomial_schedule(0.0, 0.8, 3)
    assert sched[-1] == pytest.approx(0.8) and sched == sorted(sched)
    assert sched[0] == pytest.approx(0.8 - 0.8 * (2 / 3) ** 3)  # cubic: the big step first
    assert polynomial_schedule(1.0, 0.5, 2, power=1) == pytest.approx([0.75, 0.5])

    calls: list[int] = []

    def tune(model: nn.Module, k: int) -> dict[str, int]:
        calls.append(k)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(2, 3, 32, 32)).sum().backward()
            opt.step()
        if k == 1 and crash:
            raise RuntimeError("killed")
        return {"round": k}

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return build_model("resnet20", num_classes=3, width=4)

    crash = True
    with pytest.raises(RuntimeError):
        iterative_sparsify(fresh(), sched, tune, tmp_path / "r")
    assert calls == [0, 1]
    crash = False
    model = fresh()
    masks = iterative_sparsify(model, sched, tune, tmp_path / "r")
    assert calls == [0, 1, 1, 2]  # resumed at round 1: round 0 was not repeated
    assert masks.stats(model)["layer_sparsity"] == pytest.approx(0.8, abs=0.01)
    for name, mask in masks.masks.items():
        assert torch.count_nonzero(dict(model.named_modules())[name].weight[~mask]) == 0
    with pytest.raises(RLPruneError, match=r"another rounds schedule \(targets: "):
        iterative_sparsify(fresh(), [0.5], tune, tmp_path / "r")
