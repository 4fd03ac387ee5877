"""Which channels of a network can be pruned together: the dependency groups of torch-pruning's
``DependencyGraph``, in forward order, with the per-unit features the environment observes.

Facts about torch-pruning 1.6.1 this module works around: ``get_all_groups`` does not yield groups in forward order
(we sort by the first module of each group the forward pass reaches), and the graph cannot be deep-copied (it is
rebuilt on each copy of the model, which takes tens of milliseconds).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from torch import nn

from rlprune.errors import RLPruneError
from rlprune.pruning.options import PruneOptions


@dataclass(frozen=True)
class Unit:
    """A prunable unit: one dependency group, pruned as a whole along its root's output channels.

    :param index: position in forward order.
    :param name: qualified name of the root module (the group's key in a plan).
    :param kind: ``conv``, ``depthwise``, ``linear``, ``heads`` (whole attention heads) or ``mlp`` (hidden neurons of a
        token-wise Linear pair, as in a transformer block).
    :param channels: prunable channels of the group.
    :param in_channels: input channels of the root module.
    :param kernel: kernel size of the root (1 for linear).
    :param stride: stride of the root (1 for linear).
    :param fmap: output feature-map side of the root (1 for linear).
    :param params: parameters of the modules whose outputs this unit prunes.
    :param macs: MACs of the conv/linear layers whose outputs this unit prunes.
    :param coupled: number of modules whose weights change when this unit is pruned.
    :param members: names of the conv/linear layers whose output channels belong to this unit.
    :param groups: the unit keeps a multiple of this many channels, the same positions in each of its ``groups``
        equal slices (its channels feed or leave grouped convolutions; 1 for everything else, depthwise included).
    :param head_dim: for ``kind == "heads"`` (an attention's q/k/v outputs), the channels per head: ``channels``
        then counts heads, the unit's pruning step; 0 otherwise.
    :param norm_spread: coefficient of variation (std / mean) of the L2 norms of the unit's output channels (of its
        heads, for attention), over all its member layers: a cheap redundancy signal at analysis time. Near 0, every
        channel carries as much weight as the next; a large spread means that magnitude pruning finds weak channels.
    """

    index: int
    name: str
    kind: str
    channels: int
    in_channels: int
    kernel: int
    stride: int
    fmap: int
    params: int
    macs: int
    coupled: int
    members: tuple[str, ...]
    groups: int = 1
    head_dim: int = 0
    norm_spread: float = 0.0


@dataclass(frozen=True)
class Layer:
    """A conv or linear layer, for predicting a plan's MACs and parameters without pruning.

    ``out_unit`` / ``in_unit`` index the units that prune its output / input channels (``None``: never pruned).
    When its inputs come from several units (a ``torch.cat`` of branches) or only partly from one, ``in_units``
    lists ``(unit, input channels it provides)`` and ``in_channels`` the layer's input width; the rest is fixed.
    """

    name: str
    macs: int
    weight: int
    bias: int
    out_unit: int | None
    in_unit: int | None
    depthwise: bool
    in_units: tuple[tuple[int, int], ...] = ()
    in_channels: int = 0


@dataclass
class Structure:
    """Prunable units of a model in forward order, its layers and totals, and a fingerprint of its architecture."""

    units: list[Unit]
    layers: list[Layer]
    total_macs: int
    total_params: int
    fingerprint: str
    input_shape: tuple[int, ...]
    extra: dict[str, object] = field(default_factory=dict)
    # what the user told analysis (``prune.ignore`` / ``prune.heads``); plans made from this structure carry it
    options: PruneOptions = field(default_factory=PruneOptions)

    @property
    def granularity(self) -> str:
        """What a unit is: ``channel`` (output channels of a group), or for weight-level structures
        (:mod:`rlprune.pruning.weights`) ``unstructured`` or an N:M pattern label such as ``2:4``."""
        return str(self.extra.get("pattern", "channel"))

    def unit(self, name: str) -> Unit:
        for u in self.units:
            if u.name == name:
                return u
        raise RLPruneError(f"unit '{name}': not a prunable unit of this model")

    def to_dict(self) -> dict[str, object]:
        return {
            "units": [asdict(u) for u in self.units],
            "total_macs": self.total_macs,
            "total_params": self.total_params,
            "fingerprint": self.fingerprint,
        }


def architecture_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter's and buffer's name and shape: equal for models of identical architecture."""
    items = [(n, tuple(t.shape)) for n, t in model.state_dict().items()]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]
