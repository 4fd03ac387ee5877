"""Attention heads as prunable units: finding q/k/v projections and their head count, and keeping heads whole.

Torch-pruning couples the q, k and v projections' outputs and the output projection's inputs into one dependency
group (they meet in ``q·kᵀ`` and ``attn·v``). Pruned channel by channel, that group breaks the model's
``view(batch, tokens, heads, head_dim)``; pruned by whole heads (``head_dim`` channels at a time, at the same
positions in q, k and v) it stays valid. This module recognises such groups by the projections' names (the
conventions of Hugging Face, timm and most hand-written attention) and reads the head count from the attention
module's attribute (``num_heads``, ``num_attention_heads``, ...), which is updated after pruning, or from the
user's ``prune.heads`` (:mod:`rlprune.pruning.options`) when the model has no such attribute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rlprune.errors import RLPruneError
from rlprune.pruning.options import PruneOptions, heads_hint

HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads", "num_head")
# Names of separate projections (q/k/v) and fused ones (one Linear giving q, k and v in three sections).
SEPARATE = {"q", "k", "v", "query", "key", "value", "q_proj", "k_proj", "v_proj", "q_lin", "k_lin", "v_lin"}
SEPARATE |= {"to_q", "to_k", "to_v", "wq", "wk", "wv", "q_linear", "k_linear", "v_linear"}
FUSED = {"qkv", "in_proj", "to_qkv", "c_attn", "wqkv", "qkv_proj"}


@dataclass(frozen=True)
class Heads:
    """One attention's heads: ``heads`` blocks of ``head_dim`` channels, in ``sections`` (3 for fused q/k/v)."""

    module: str  # qualified name of the attention module (the one holding the head-count attribute, if any)
    attr: str  # its head-count attribute, updated after pruning ("": none, the count was given as a number)
    heads: int
    head_dim: int
    sections: int
    tokens: int  # sequence length seen at analysis (for the q·kᵀ and attn·v MACs)
    fold: int = 1  # sequences per input image (MobileViT folds patches into the batch)

    def channel_indices(self, kept_heads: list[int]) -> list[int]:
        """Channel indices of the projection outputs that belong to the kept heads."""
        width = self.heads * self.head_dim
        return [
            s * width + h * self.head_dim + j
            for s in range(self.sections)
            for h in kept_heads
            for j in range(self.head_dim)
        ]

    def matmul_macs(self) -> int:
        """MACs of ``q·kᵀ`` and ``attn·v`` at batch 1 (``2·tokens²·heads·head_dim``, as FlopCounterMode counts)."""
        return 2 * self.fold * self.tokens * self.tokens * self.heads * self.head_dim


def _head_count(model: nn.Module, name: str, options: PruneOptions) -> tuple[str, str, int] | None:
    """The nearest enclosing module of ``name`` (up to two levels up) with a head count: given in ``options`` (a
    number, or the name of the attribute holding it), else an integer head-count attribute."""
    parts = name.split(".")
    owners = [".".join(parts[:-up]) for up in (1, 2) if len(parts) > up - 1]
    for owner in owners:  # the user's word first, at any level
        given = options.given_heads(owner)
        if given is None:
            continue
        mod = model.get_submodule(owner) if owner else model
        if isinstance(given, int):
            attr = next((a for a in HEAD_ATTRS if _positive_int(getattr(mod, a, None))), "")
            return owner, attr, given
        value = getattr(mod, given, None)
        if not _positive_int(value):
            raise RLPruneError(
                f"prune.heads: '{owner}': attribute '{given}' is {type(value).__name__}, not a head count > 0"
            )
        return owner, given, int(value)
    for owner in owners:
        mod = model.get_submodule(owner) if owner else model
        for attr in HEAD_ATTRS:
            value = getattr(mod, attr, None)
            if _positive_int(value):
                return owner, attr, value
    return None


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def find_heads(
    model: nn.Module,
    names: dict[nn.Module, str],
    outs: list[nn.Module],
    shapes: dict[nn.Module, tuple],
    options: PruneOptions | None = None,
) -> Heads | None:
    """The heads of an attention whose q/k/v projections are the output-pruned Linear layers ``outs`` of one group;
    ``None`` when the group is not an attention's: no member named like a q/k/v projection, and not (as the user
    can say with ``prune.heads``) two or more Linear layers that are all children of a module given a head count.

    :param outs: the group's output-pruned conv and Linear layers, in forward order.
    :param options: head counts the user gave (``prune.heads``), used before the model's own attributes.
    """
    options = options or PruneOptions()
    outs = list(dict.fromkeys(outs))
    linear = [m for m in outs if isinstance(m, nn.Linear)]
    proj = [m for m in linear if names[m].rsplit(".", 1)[-1].lower() in SEPARATE | FUSED]
    parents = {names[m].rsplit(".", 1)[0] if "." in names[m] else "" for m in outs}
    given = len(parents) == 1 and options.given_heads(next(iter(parents))) is not None
    if not proj and given and len(linear) == len(outs) >= 2:
        proj = linear  # projections named otherwise, in a module the user gave heads for
    if not proj:
        return None
    first = proj[0]
    fused = names[first].rsplit(".", 1)[-1].lower() in FUSED
    found = _head_count(model, names[first], options)
    if found is None:
        owner = names[first].rsplit(".", 1)[0] if "." in names[first] else ""
        raise RLPruneError(
            f"attention '{owner}': projection '{names[first]}' has no head count (no int attribute "
            f"{' / '.join(HEAD_ATTRS[:3])} on its module); {heads_hint(owner)}"
        )
    owner, attr, heads = found
    width = first.out_features // (3 if fused else 1)
    if width % heads or (fused and first.out_features % 3):
        raise RLPruneError(
            f"attention '{owner}': {names[first]} has {first.out_features} outputs, not a multiple of "
            f"{attr or 'prune.heads'}={heads}{' x 3 (fused q/k/v)' if fused else ''}"
        )
    shape = shapes.get(first, ())
    tokens = int(shape[-2]) if len(shape) >= 3 else 1
    fold = 1
    for d in shape[:-2]:
        fold *= int(d)
    return Heads(owner, attr, heads, width // heads, 3 if fused else 1, tokens, fold)


def head_scores(scores: torch.Tensor, heads: Heads) -> torch.Tensor:
    """Per-head importance: the mean of its channels' scores over all sections."""
    width = heads.heads * heads.head_dim
    per = scores[: width * heads.sections].reshape(heads.sections, heads.heads, heads.head_dim)
    return per.mean(dim=(0, 2))


def set_head_count(model: nn.Module, heads: Heads, kept: int) -> None:
    """Record the pruned head count on the attention module (models that reshape by it need it)."""
    mod = model.get_submodule(heads.module) if heads.module else model
    if heads.attr:
        setattr(mod, heads.attr, kept)
    for attr in ("all_head_size", "inner_dim"):
        if isinstance(getattr(mod, attr, None), int):
            setattr(mod, attr, kept * heads.head_dim)
