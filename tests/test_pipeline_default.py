"""The main job's default reward is latency-aware; a reward the config names is left alone."""

from __future__ import annotations

import torch
from torch import nn

from rlprune.config import SearchConfig, validate
from rlprune.cost.lut import timeable
from rlprune.jobs.pipeline import LATENCY_BATCH, LATENCY_WEIGHT, ORT_ROUND_TO, with_default_reward
from rlprune.models import build_model
from rlprune.pruning import analyze


def _cfg(**sections: object) -> SearchConfig:
    return validate(SearchConfig, {"name": "x", "checkpoint": "unused", **sections}, "test")


def test_run_defaults_to_the_latency_reward_only_when_none_is_named() -> None:
    default = with_default_reward(_cfg(env={"target": 0.5}))
    assert (default.env.reward, default.env.reward_weight) == ("accuracy_latency", LATENCY_WEIGHT)
    assert default.latency.batch_size == LATENCY_BATCH and default.env.target == 0.5 and default.env.budget == "macs"
    chosen = with_default_reward(_cfg(env={"reward_weight": 0.1}, latency={"batch_size": 8}))
    assert (chosen.env.reward, chosen.env.reward_weight, chosen.latency.batch_size) == ("accuracy_latency", 0.1, 8)
    for named in (
        _cfg(env={"reward": "accuracy"}),
        _cfg(env={"reward": "accuracy_worst_class"}),
        _cfg(env={"budget": "latency"}),
    ):
        assert with_default_reward(named) == named
    # a job that ships an int8 model steers by int8 latency in ONNX Runtime, unless a runtime is named
    assert with_default_reward(_cfg(finetune={"quantize": "int8"})).latency.runtime == "onnxruntime-int8"
    named_runtime = _cfg(finetune={"quantize": "int8"}, latency={"runtime": "torch"})
    assert with_default_reward(named_runtime).latency.runtime == "torch"
    assert with_default_reward(_cfg()).latency.runtime == "torch"
    int8_budget = with_default_reward(_cfg(env={"budget": "latency"}, finetune={"quantize": "int8"}))
    assert (int8_budget.env.budget, int8_budget.latency.runtime) == ("latency", "onnxruntime-int8")
    # latency timed in ONNX Runtime rounds kept channels (its kernels run other counts far slower), unless named
    assert with_default_reward(_cfg(finetune={"quantize": "int8"})).env.round_to == ORT_ROUND_TO
    assert with_default_reward(_cfg(latency={"runtime": "onnxruntime"})).env.round_to == ORT_ROUND_TO
    assert with_default_reward(_cfg(latency={"runtime": "onnxruntime"}, env={"round_to": 4})).env.round_to == 4
    assert with_default_reward(_cfg(latency={"runtime": "onnxruntime"}, env={"round_to": None})).env.round_to is None
    assert with_default_reward(_cfg()).env.round_to is None  # PyTorch eager: left as it is
    rounded = with_default_reward(_cfg(env={"reward": "accuracy"}, latency={"runtime": "onnxruntime-int8"}))
    assert (rounded.env.reward, rounded.env.round_to) == ("accuracy", ORT_ROUND_TO)
    weight_level = _cfg(env={"granularity": "unstructured", "budget": "params"}, latency={"runtime": "onnxruntime"})
    assert with_default_reward(weight_level).env.round_to is None  # rounding is for channel plans only
    # a resumed run keeps the reward and rounding it began with unless the config names them
    began = {"reward": "accuracy_latency", "round_to": None}
    assert with_default_reward(_cfg(finetune={"quantize": "int8"}), began=began).env.round_to is None
    assert with_default_reward(_cfg(finetune={"quantize": "int8"}), began={"reward": "accuracy"}).env.round_to is None
    assert with_default_reward(_cfg(env={"round_to": 4}), began=began).env.round_to == 4
    plain = with_default_reward(_cfg(), began={"reward": "accuracy", "round_to": 8})
    assert (plain.env.reward, plain.env.round_to) == ("accuracy", 8)
    # what the run directory records is the reward the search used
    assert with_default_reward(_cfg()).model_dump(mode="json")["env"]["reward"] == "accuracy_latency"


class WithConv1d(nn.Module):
    """A model with a layer the latency table cannot time (Conv1d): the default must not make its run fail."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Conv1d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).flatten(2)
        return self.head(self.mix(y).mean(-1))


def test_models_the_latency_table_cannot_time_keep_the_accuracy_reward() -> None:
    example = torch.zeros(1, 3, 32, 32)
    resnet = build_model("resnet20", num_classes=3, width=4).eval()
    assert timeable(resnet, analyze(resnet, example))
    odd = WithConv1d().eval()
    structure = analyze(odd, example)
    assert not timeable(odd, structure)
    assert with_default_reward(_cfg(), odd, structure).env.reward == "accuracy"
    assert with_default_reward(_cfg(), resnet, analyze(resnet, example)).env.reward == "accuracy_latency"
