"""What rlprune's jobs return and write: a fine-tune's ``report.json``, a search's ``summary.json``, a round's record
and the main job's result, as typed, validated records.

Code reads them by attribute (``report.pruned.after_finetune.test``), so a renamed field is a type error instead of
a ``KeyError`` at the end of an hour-long job; JSON stays the on-disk form (:meth:`Record.to_dict`), and a file read
back goes through the same model (:meth:`Record.load`), so a report a user hands over is checked before it is used.
Sections that only carry measurements through to a file (ONNX check, per-class numbers, int8, provenance) stay
mappings: nothing in the package navigates them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict

from rlprune.io.files import atomic_write_text, read_json
from rlprune.io.safe import json_safe
from rlprune.io.schemas import validated


class Record(BaseModel):
    """A typed record with a JSON form: finite numbers only, no field it does not know."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (what the file holds); optional sections left empty are left out."""
        return self.model_dump(mode="json", exclude_none=False, exclude=self._absent())

    def _absent(self) -> set[str]:
        return {name for name in self.OPTIONAL if getattr(self, name) is None}

    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    def save(self, path: Path) -> None:
        """Write the JSON form atomically (a reader never sees half a file)."""
        text = json.dumps(json_safe(self.to_dict()), indent=1, allow_nan=False)
        atomic_write_text(path, text + "\n")

    @classmethod
    def parse(cls, data: Any, source: str) -> Self:
        """Validate ``data`` (a JSON object) as this record; one line naming ``source`` and the field if it is not."""
        return validated(cls, data, source)

    @classmethod
    def load(cls, path: Path, what: str) -> Self:
        """Read and validate ``path`` (parsed under the safe reader's limits)."""
        return cls.parse(read_json(path, what), str(path))


# ------------------------------------------------------------------------------------------------------ fine-tune
class Accuracies(Record):
    """Accuracy in % on the validation split (the one that may choose) and the test split (reported only)."""

    val: float
    test: float


class DenseSide(Accuracies):
    params: int
    macs: int


class PrunedSide(Record):
    params: int
    macs: int
    macs_ratio: float
    before_finetune: Accuracies
    after_finetune: Accuracies


class FinetuneRecipe(Record):
    epochs: int
    lr: float
    distill: bool
    swa: dict[str, float] | None = None
    history: list[dict[str, Any]]


class FinetuneReport(Record):
    """A fine-tune's ``report.json``: the dense and pruned models' costs and accuracies, latency, the recipe, and
    what was exported. Latencies are ``{"dense" | "pruned": {batch size as text: ms}}``."""

    model: str
    source: dict[str, Any]
    plan_units: int
    dense: DenseSide
    pruned: PrunedSide
    latency_ms_cpu: dict[str, dict[str, float]]
    latency_ms_gpu: dict[str, dict[str, float]] | None = None
    onnx: dict[str, Any]
    finetune: FinetuneRecipe
    environment: dict[str, Any]
    classes: dict[str, Any] | None = None
    sparse: dict[str, Any] | None = None
    int8: dict[str, Any] | None = None
    figures: dict[str, str] | None = None
    provenance: dict[str, Any] | None = None

    OPTIONAL: ClassVar[tuple[str, ...]] = ("classes", "sparse", "int8", "figures", "provenance")

    @property
    def params_ratio(self) -> float:
        return self.pruned.params / self.dense.params

    def latency_ratio(self, batch: int | str, device: str = "cpu") -> float:
        """Pruned/dense latency at ``batch`` (NaN where it was not measured)."""
        lat = self.latency_ms_cpu if device == "cpu" else self.latency_ms_gpu
        dense = (lat or {}).get("dense", {}).get(str(batch))
        pruned = (lat or {}).get("pruned", {}).get(str(batch))
        return pruned / dense if dense and pruned is not None else float("nan")

    def latency_batches(self) -> list[str]:
        """The batch sizes measured on the CPU, smallest first."""
        return sorted(self.latency_ms_cpu.get("dense", {}), key=int)


# --------------------------------------------------------------------------------------------------------- search
class SearchBest(Record):
    """The best episode of a search (highest reward). ``accuracy`` is the scorer's, on validation data; ``None``
    for a policy's rollout, which scores nothing."""

    episode: int | None = None
    reward: float | None = None
    accuracy: float | None
    macs_ratio: float
    latency_ratio: float | None = None
    target: float | None = None
    budget_cost: float | None = None
    measured_latency_ratio: float | None = None


class UniformReference(Record):
    """The uniform plan at the search's target, scored like every searched plan (not an episode)."""

    accuracy: float
    budget_cost: float
    macs_ratio: float
    latency_ratio: float | None


class SearchSummary(Record):
    """A one-model search's ``summary.json``."""

    name: str
    searcher: str
    episodes: int
    best: SearchBest
    budget: str
    wall_seconds_this_session: float
    wall_seconds: float
    seconds_per_episode: float
    mean_eval_seconds: float
    uniform: UniformReference
    provenance: dict[str, Any] | None = None

    OPTIONAL: ClassVar[tuple[str, ...]] = ("provenance",)


class ModelSummary(Record):
    """One model of a search over several: where it came from (checkpoint, copy or scorer), how often it was drawn
    and how the policy's reward on it moved, and the env's reference scores on it."""

    model_config = ConfigDict(extra="allow", protected_namespaces=(), allow_inf_nan=False)  # its source's fields

    name: str
    fingerprint: str
    units: int
    episodes: int
    mean_reward_first: float | None = None
    mean_reward_last: float | None = None
    references: dict[str, Any]


class MultiSearchSummary(Record):
    """A search over several models' ``summary.json``: one policy, per-model statistics."""

    name: str
    searcher: str
    episodes: int
    reward: str
    target: float | list[float]
    models: list[ModelSummary]
    wall_seconds_this_session: float
    wall_seconds: float
    seconds_per_episode: float
    provenance: dict[str, Any] | None = None

    OPTIONAL: ClassVar[tuple[str, ...]] = ("provenance",)


def load_summary(path: Path) -> SearchSummary | MultiSearchSummary:
    """A ``summary.json`` of either kind (a search over several models lists its ``models``)."""
    data = read_json(path, "search summary")
    kind = MultiSearchSummary if isinstance(data, Mapping) and "models" in data else SearchSummary
    return kind.parse(data, str(path))


# ----------------------------------------------------------------------------------------------------- main job
class RoundRecord(Record):
    """What ``rounds.json`` keeps of a finished round, against the original dense model (paths relative to the run
    directory, so it can move)."""

    round: int
    target: float
    checkpoint: str
    proxy_val_accuracy: float | None
    macs_ratio: float
    params_ratio: float
    val_accuracy: float
    test_accuracy: float
    latency_ratio_cpu: dict[str, float]


class JobResult(Record):
    """What ``rlprune run`` returns: the headline numbers and where the outputs are. ``report_md`` holds the Markdown
    report; ``rounds`` each round's record when the job ran in rounds; ``outside_training``, for a policy's rollout,
    how many units lie outside what the policy saw (None after a search, or for a policy with no recorded range)."""

    best_val_proxy_accuracy: float | None
    macs_ratio: float
    outside_training: dict[str, Any] | None = None
    report: str
    pruned_model: str
    tensorboard: str
    report_md: str
    rounds: list[RoundRecord] | None = None

    OPTIONAL: ClassVar[tuple[str, ...]] = ("rounds",)


__all__ = [
    "Accuracies",
    "DenseSide",
    "FinetuneRecipe",
    "FinetuneReport",
    "JobResult",
    "ModelSummary",
    "MultiSearchSummary",
    "PrunedSide",
    "Record",
    "RoundRecord",
    "SearchBest",
    "SearchSummary",
    "UniformReference",
    "load_summary",
]
