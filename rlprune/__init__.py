"""rlprune: learn how much to prune each layer with reinforcement learning, apply it to other models, fine-tune.

The public API, in the order a job uses it::

    import rlprune as rp

    structure = rp.analyze(model, example_inputs)                       # prunable units (torch-pruning groups)
    scorer = rp.MetricScorer(model, example_inputs, my_metric, train_loader=train_loader)
    result = rp.search(scorer, target=0.5, agent="ppo", episodes=60)    # -> best plan, policy, records
    pruned, plan = rp.prune(model, result.best_plan, example_inputs)   # smaller tensors, not masks
    rp.finetune(pruned, train_loader, epochs=2, teacher=model)
    plan2, _ = rp.apply_policy(result.policy, other_model, example_inputs, target=0.5)   # no new search
    rp.export_onnx(pruned, (3, 32, 32), "pruned.onnx")
    print(rp.report(model, pruned, (3, 32, 32))["ratios"])

Names are imported on first use, so ``import rlprune`` stays cheap for the command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rlprune.version import __version__ as __version__

_EXPORTS = {
    # analysis, plans and pruning
    "analyze": "rlprune.pruning.analysis",
    "Structure": "rlprune.pruning.structure",
    "Unit": "rlprune.pruning.structure",
    "Plan": "rlprune.pruning.plan",
    "prune": "rlprune.pruning.cut",
    "Budget": "rlprune.cost.budget",
    "uniform_plan": "rlprune.cost.budget",
    # scoring
    "Scorer": "rlprune.evaluation.scorer",
    "Score": "rlprune.evaluation.scorer",
    "MetricScorer": "rlprune.evaluation.scorer",
    "ProxyEvaluator": "rlprune.evaluation.proxy",
    # search
    "LayerPruningEnv": "rlprune.envs.layer_pruning",
    "search": "rlprune.searching.api",
    "SearchResult": "rlprune.searching.api",
    "load_result": "rlprune.searching.api",
    "Policy": "rlprune.agents.policy_io",
    "load_policy": "rlprune.agents.policy_io",
    # apply, fine-tune, export, report
    "apply_policy": "rlprune.jobs.apply",
    "finetune": "rlprune.training.loop",
    "export_onnx": "rlprune.deploy.onnx",
    "report": "rlprune.reporting.tables",
    # compression beyond channels: per-class metrics, int8, sparsity
    "class_report": "rlprune.evaluation.classes",
    "evaluate_classes": "rlprune.evaluation.classes",
    "quantize_int8": "rlprune.deploy.int8",
    "OnnxModel": "rlprune.deploy.int8",
    "sparsify": "rlprune.pruning.sparsity",
    "save_sparse": "rlprune.pruning.sparsity",
    "load_sparse": "rlprune.pruning.sparsity",
    "weight_structure": "rlprune.pruning.weights",
    "sparsify_plan": "rlprune.pruning.weights",
    # checkpoints and data
    "load_checkpoint": "rlprune.io.checkpoint",
    "save_checkpoint": "rlprune.io.checkpoint",
    "load_splits": "rlprune.data",
    "build_model": "rlprune.models",
    "RLPruneError": "rlprune.errors",
}

__all__ = [
    "Budget",
    "LayerPruningEnv",
    "MetricScorer",
    "OnnxModel",
    "Plan",
    "Policy",
    "ProxyEvaluator",
    "RLPruneError",
    "Score",
    "Scorer",
    "SearchResult",
    "Structure",
    "Unit",
    "analyze",
    "apply_policy",
    "build_model",
    "class_report",
    "evaluate_classes",
    "export_onnx",
    "finetune",
    "load_checkpoint",
    "load_policy",
    "load_result",
    "load_sparse",
    "load_splits",
    "prune",
    "quantize_int8",
    "report",
    "save_checkpoint",
    "save_sparse",
    "search",
    "sparsify",
    "sparsify_plan",
    "uniform_plan",
    "weight_structure",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rlprune' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from rlprune.agents.policy_io import Policy, load_policy
    from rlprune.cost.budget import Budget, uniform_plan
    from rlprune.data import load_splits
    from rlprune.deploy.int8 import OnnxModel, quantize_int8
    from rlprune.deploy.onnx import export_onnx
    from rlprune.envs.layer_pruning import LayerPruningEnv
    from rlprune.errors import RLPruneError
    from rlprune.evaluation.classes import class_report, evaluate_classes
    from rlprune.evaluation.proxy import ProxyEvaluator
    from rlprune.evaluation.scorer import MetricScorer, Score, Scorer
    from rlprune.io.checkpoint import load_checkpoint, save_checkpoint
    from rlprune.jobs.apply import apply_policy
    from rlprune.models import build_model
    from rlprune.pruning.analysis import analyze
    from rlprune.pruning.cut import prune
    from rlprune.pruning.plan import Plan
    from rlprune.pruning.sparsity import load_sparse, save_sparse, sparsify
    from rlprune.pruning.structure import Structure, Unit
    from rlprune.pruning.weights import sparsify_plan, weight_structure
    from rlprune.reporting.tables import report
    from rlprune.searching.api import SearchResult, load_result, search
    from rlprune.training.loop import finetune
