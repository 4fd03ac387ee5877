"""Torch-Pruning's own answers to "how much of each layer?", read back as per-unit ratios.

A user weighing an RL search against what one line of the engine already gives runs
``tp.pruner.MetaPruner(model, example_inputs, importance, global_pruning=True)``: every channel of the network ranked
against one threshold (global pruning), or, with ``isomorphic=True``, ranked only against the channels of groups with
the same structure (isomorphic pruning, Fang et al., ECCV 2024, https://arxiv.org/abs/2407.04616). Both decide an
*allocation* — how many channels each layer loses — from weight magnitudes alone.

:class:`PeerAllocation` runs that pruner as the user would (interactively, so the model is never cut) and reports the
fraction of each unit's channels it would remove at a given global pruning ratio. The baseline searchers
(``--agent tp-global`` and friends) solve that ratio for the run's budget and play the allocation through the same
environment as every other plan, so the comparison differs in the allocation only: the same budget clamp, the same
channel choice (``prune.importance``) and the same scorer or fine-tune.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from rlprune.errors import RLPruneError
from rlprune.pruning.graph import find_classifier, trace_shapes
from rlprune.pruning.limits import time_limit
from rlprune.pruning.structure import Structure


@dataclass(frozen=True)
class Peer:
    """One of Torch-Pruning's global ranking schemes.

    :param name: registry name, also the searcher's (``--agent <name>``).
    :param norm: the ``p`` of ``tp.importance.GroupMagnitudeImportance`` (1: L1 magnitude, 2: group L2).
    :param isomorphic: rank within groups of identical structure only (isomorphic pruning).
    """

    name: str
    norm: int
    isomorphic: bool

    def importance(self) -> tp.importance.Importance:
        return tp.importance.GroupMagnitudeImportance(p=self.norm)


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("tp-global-l1", norm=1, isomorphic=False),  # global magnitude pruning
        Peer("tp-global", norm=2, isomorphic=False),  # DepGraph's global group-L2 pruning
        Peer("tp-isomorphic", norm=2, isomorphic=True),  # isomorphic pruning over group-L2 scores
    )
}


def _out_channels(m: nn.Module) -> int:
    for attr in ("out_channels", "out_features"):
        if isinstance(getattr(m, attr, None), int):
            return int(getattr(m, attr))
    raise RLPruneError(f"peer allocation: layer {type(m).__name__} has no out_channels/out_features")


class PeerAllocation:
    """The per-unit pruning ratios Torch-Pruning's global (or isomorphic) pruning chooses for ``model``.

    :param model: the dense model (left unchanged: the pruner runs interactively and its groups are read, not applied).
    :param example: an input batch for tracing.
    :param structure: the model's units (:func:`rlprune.analyze`); the classifier and the parts it ignores are handed
        to the pruner as ``ignored_layers``.
    :param peer: the ranking scheme (a :data:`PEERS` entry or its name).
    :param max_ratio: the pruner's ``max_pruning_ratio`` (no unit loses more), as the user would set it to the
        budget's own cap.
    """

    def __init__(
        self, model: nn.Module, example: torch.Tensor, structure: Structure, peer: Peer | str, *, max_ratio: float
    ) -> None:
        if isinstance(peer, str):
            if peer not in PEERS:
                raise RLPruneError(f"peer '{peer}': unknown (expected one of {', '.join(sorted(PEERS))})")
            peer = PEERS[peer]
        if structure.granularity != "channel":
            raise RLPruneError(f"peer '{peer.name}': allocates channels; this structure is {structure.granularity}")
        self.model, self.example, self.structure, self.peer = model, example, structure, peer
        self.max_ratio = float(max_ratio)
        modules = dict(model.named_modules())
        self._members: dict[nn.Module, str] = {}  # conv/linear layer -> the unit whose output channels it carries
        for unit in structure.units:
            for member in unit.members:
                if member in modules:
                    self._members[modules[member]] = unit.name
        self._width = {name: _out_channels(m) for m, name in self._members.items()}
        order, _ = trace_shapes(model, example)
        options = structure.options
        self._ignored = [find_classifier(model, order)] + [
            m for n, m in modules.items() if n and options.ignore and options.ignores(n)
        ]

    def ratios(self, global_ratio: float) -> list[float]:
        """Per-unit pruned fraction (forward order) at ``global_ratio`` of all channels removed network-wide."""
        removed: dict[str, int] = {}
        was_training = self.model.training
        self.model.eval()  # tracing runs a forward pass: no batch-norm statistics may move
        try:
            with (
                time_limit(f"peer '{self.peer.name}' (torch-pruning's MetaPruner)"),
                torch.enable_grad(),
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore")  # e.g. its note on unwrapped parameters, which it handles itself
                pruner = tp.pruner.MetaPruner(
                    self.model,
                    self.example,
                    importance=self.peer.importance(),
                    global_pruning=True,
                    isomorphic=self.peer.isomorphic,
                    pruning_ratio=float(global_ratio),
                    max_pruning_ratio=self.max_ratio,
                    ignored_layers=self._ignored,
                )
                for group in pruner.step(interactive=True):
                    for dep, idxs in group:
                        name = self._members.get(dep.target.module)
                        if name is not None and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                            removed[name] = max(removed.get(name, 0), len(idxs))
        except RLPruneError:
            raise
        except Exception as exc:  # the engine fails in many types on models it cannot rank
            raise RLPruneError(
                f"peer '{self.peer.name}': torch-pruning's MetaPruner failed on this model ({type(exc).__name__}: "
                f"{exc})"
            ) from exc
        finally:
            self.model.train(was_training)
        return [
            min(removed.get(u.name, 0) / self._width[u.name], 1.0) if u.name in self._width else 0.0
            for u in self.structure.units
        ]


__all__ = ["PEERS", "Peer", "PeerAllocation"]
