"""Structural pruning on top of torch-pruning: analysis, plans, importance criteria, pruning."""

from rlprune.pruning.analysis import analyze
from rlprune.pruning.cut import prune, rebuild_pruned
from rlprune.pruning.importance import CRITERIA, Criterion, get_criterion
from rlprune.pruning.plan import Plan, kept_channels
from rlprune.pruning.structure import Structure, Unit, architecture_fingerprint

__all__ = [
    "CRITERIA",
    "Criterion",
    "Plan",
    "Structure",
    "Unit",
    "analyze",
    "architecture_fingerprint",
    "get_criterion",
    "kept_channels",
    "prune",
    "rebuild_pruned",
]
