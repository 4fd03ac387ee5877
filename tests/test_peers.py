"""Torch-Pruning's global and isomorphic pruning as baseline searchers: the allocation read back is the one the
engine really cuts, the dense model is left alone, and a search with them lands its plans on the budget."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rlprune as rp
from rlprune.cost.budget import Budget, macs_ratio
from rlprune.data import default_data_dirs
from rlprune.errors import RLPruneError
from rlprune.jobs.apply import load_dense
from rlprune.pruning.graph import find_classifier, trace_shapes
from rlprune.pruning.peers import PEERS, PeerAllocation
from rlprune.pruning.weights import weight_structure
from rlprune.searching.baselines import SEARCHERS, solve_allocation

X = torch.zeros(1, 3, 32, 32)
ZOO = Path(__file__).resolve().parents[1] / "zoo"
HAVE_DATA = any((d / "cifar10-jpeg.tar.gz").is_file() for d in default_data_dirs())


def _dense(name: str) -> nn.Module:
    return load_dense(str(ZOO / f"{name}_cifar10.json"))[0].eval()


def _cut_by_metapruner(model: nn.Module, peer: str, ratio: float, max_ratio: float) -> nn.Module:
    """What a user gets from the one line: MetaPruner run to the end on a copy."""
    copy_ = copy.deepcopy(model)
    order, _ = trace_shapes(copy_, X)
    spec = PEERS[peer]
    tp.pruner.MetaPruner(
        copy_,
        X,
        importance=tp.importance.GroupMagnitudeImportance(p=spec.norm),
        global_pruning=True,
        isomorphic=spec.isomorphic,
        pruning_ratio=ratio,
        max_pruning_ratio=max_ratio,
        ignored_layers=[find_classifier(copy_, order)],
    ).step()
    return copy_


@pytest.mark.parametrize(("name", "peer"), [("resnet20", "tp-global"), ("mobilenetv2", "tp-isomorphic")])
def test_the_allocation_is_what_the_metapruner_cuts(name: str, peer: str) -> None:
    model = _dense(name)
    structure = rp.analyze(model, X)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    allocation = PeerAllocation(model, X, structure, peer, max_ratio=0.8)
    ratios = allocation.ratios(0.4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # read, never cut (BN stats too)
    cut = dict(_cut_by_metapruner(model, peer, 0.4, 0.8).named_modules())
    widths = {u.name: getattr(cut[u.name], "out_channels", None) for u in structure.units}
    for unit, ratio in zip(structure.units, ratios, strict=True):
        assert round(unit.channels * (1 - ratio)) == widths[unit.name], unit.name
    assert sum(ratios) > 0 and len(set(ratios)) > 2  # an allocation, not one ratio everywhere


def test_more_global_pruning_never_keeps_more_of_a_unit() -> None:
    model = _dense("resnet20")
    structure = rp.analyze(model, X)
    allocation = PeerAllocation(model, X, structure, "tp-global-l1", max_ratio=0.8)
    low, high = allocation.ratios(0.2), allocation.ratios(0.5)
    assert allocation.ratios(0.2) == low  # magnitudes decide it: the same answer every time
    assert all(a <= b for a, b in zip(low, high, strict=True)) and sum(high) > sum(low)


def test_the_ratio_is_solved_for_each_budget_kind() -> None:
    model = _dense("resnet20")
    structure = rp.analyze(model, X)
    for kind, target in (("macs", 0.5), ("params", 0.4)):
        budget = Budget(structure, target, kind=kind)
        ratios = solve_allocation(PeerAllocation(model, X, structure, "tp-global", max_ratio=0.8), budget, target)
        plan = budget.plan(ratios)
        cost = budget.cost(plan.channels)
        assert target - budget.tolerance <= cost <= target + 1e-9, (kind, cost)
        assert plan.ratios != budget.uniform_plan().ratios


def test_peers_refuse_what_they_cannot_allocate() -> None:
    model = _dense("resnet20")
    with pytest.raises(RLPruneError, match="peer 'tp-magic': unknown"):
        PeerAllocation(model, X, rp.analyze(model, X), "tp-magic", max_ratio=0.8)
    sparse = weight_structure(model, X, granularity="unstructured")
    with pytest.raises(RLPruneError, match="allocates channels"):
        PeerAllocation(model, X, sparse, "tp-global", max_ratio=0.8)
    assert set(PEERS) <= set(SEARCHERS)


@pytest.mark.skipif(not HAVE_DATA, reason="needs the CIFAR-10 copy ($RLPRUNE_DATA)")
def test_a_search_with_a_peer_lands_every_plan_on_the_budget(tmp_path: Path) -> None:
    splits = rp.load_splits("cifar10", limit_train=300)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (splits.mean, splits.std))

    def loader(ds: object, n: int, batch: int) -> DataLoader:
        images = (ds.images[:n].float() / 255 - mean) / std  # type: ignore[attr-defined]
        return DataLoader(TensorDataset(images, ds.labels[:n]), batch_size=batch)  # type: ignore[attr-defined]

    train, val = loader(splits.train, 128, 64), loader(splits.val, 200, 200)

    @torch.no_grad()
    def accuracy(model: nn.Module) -> float:
        x, y = next(iter(val))
        return 100.0 * (model.eval()(x).argmax(1) == y).float().mean().item()

    scorer = rp.MetricScorer(_dense("resnet20"), X, accuracy, train_loader=train, recal_batches=2)
    plans = {}
    for peer, episodes in (("tp-isomorphic", 1), ("tp-global", 3)):
        result = rp.search(scorer, target=(0.45, 0.55), agent=peer, episodes=episodes, out_dir=tmp_path / peer)
        assert result.summary.searcher == peer and len(result.records) == episodes
        for record in result.records:  # one target per episode, drawn from the range: each plan solved for its own
            assert record["target"] - 0.011 <= record["macs_ratio"] <= record["target"] + 1e-9
        plans[peer] = result.records[0]["ratios"]
    assert len({r["target"] for r in result.records}) == 3
    assert plans["tp-global"] != plans["tp-isomorphic"]
    assert 0.44 <= macs_ratio(scorer.structure, rp.Plan.from_dict(result.best["plan"])) <= 0.55
