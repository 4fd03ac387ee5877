"""The experiment config (``rlprune search|train|run``): the pruning environment, the proxy scorer, the agent, the
fine-tune of the best plan, iterative rounds and pre-pruned copies, and the whole :class:`SearchConfig`."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from rlprune.config.base import Device, RunName, Seed, Strict
from rlprune.config.training import DistillConfig, SWAConfig, TrainConfig
from rlprune.errors import RLPruneError


class EnvConfig(Strict):
    """The pruning environment: budget, reward, action range."""

    target: float | tuple[float, float] = 0.5
    # what a target counts: MACs, CPU latency (lookup table) or parameters (non-zero ones for weight-level plans)
    budget: Literal["macs", "latency", "params"] = "macs"
    # what the agent decides per unit: a channel group's pruning ratio, or a layer's weight sparsity
    # (unstructured, or N:M: which layers follow ``pattern``); weight-level plans need ``budget: params``
    granularity: Literal["channel", "unstructured", "nm"] = "channel"
    pattern: str = "2:4"
    # what action 0 stands for (rlprune.envs.priors): the middle of [min_ratio, max_ratio], the uniform plan's
    # ratio, or (unstructured) each layer's global-magnitude sparsity; actions move the ratio away from it
    prior: Literal["none", "uniform", "magnitude"] = "none"
    reward: str = "accuracy"
    reward_weight: float = Field(1.0, ge=0)
    min_ratio: float = Field(0.0, ge=0, lt=1)
    max_ratio: float = Field(0.8, gt=0, lt=1)
    # kept channels rounded to a multiple of this; "auto": this CPU's fp32 vector width (16 with AVX-512, 8 with
    # AVX2), which CPU kernels block channels by (resolved when the config is read; the run records the number).
    # rlprune run sets 8 when it times latency in ONNX Runtime and this is not given (rlprune.jobs.pipeline)
    round_to: Annotated[int, Field(ge=1)] | Literal["auto"] | None = None
    min_channels: int = Field(1, ge=1)
    tolerance: float = Field(0.01, gt=0, lt=0.5)

    @field_validator("round_to", mode="before")
    @classmethod
    def _round_to(cls, value: Any) -> Any:
        if value is None or value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError("expected a whole number of channels >= 1 or 'auto'")

    @model_validator(mode="after")
    def _check(self) -> EnvConfig:
        from rlprune.envs.rewards import REWARDS

        if self.round_to == "auto":
            from rlprune.cost.latency import simd_channels

            self.round_to = simd_channels()
        targets = (self.target,) if isinstance(self.target, float | int) else self.target
        if not all(0 < t <= 1 for t in targets) or (len(targets) == 2 and targets[0] > targets[1]):
            raise ValueError(f"target must be a ratio in (0, 1] or a range [low, high] inside it, got {self.target}")
        if self.min_ratio > self.max_ratio:
            raise ValueError(f"min_ratio ({self.min_ratio}) > max_ratio ({self.max_ratio})")
        if self.reward not in REWARDS:
            raise ValueError(f"unknown reward '{self.reward}' (expected one of {', '.join(sorted(REWARDS))})")
        if self.granularity != "channel":
            from rlprune.pruning.sparsity import parse_nm

            if self.granularity == "nm":
                try:
                    parse_nm(self.pattern)
                except RLPruneError as exc:
                    raise ValueError(f"pattern: {exc}") from None
            if self.budget != "params":
                raise ValueError(
                    f"granularity {self.granularity} zeroes weights, which saves parameters, not {self.budget} "
                    "(dense kernels run a sparse layer as fast as a dense one): use budget: params"
                )
            if self.reward == "accuracy_latency" or self.round_to is not None:
                raise ValueError(f"granularity {self.granularity}: latency rewards and round_to are for channels")
        if self.prior == "magnitude" and self.granularity != "unstructured":
            raise ValueError(
                f"prior magnitude is global magnitude sparsity, for granularity unstructured, not "
                f"{self.granularity} (use prior uniform or none)"
            )
        return self


class PruneConfig(Strict):
    """What rlprune cannot find in a model by itself (:mod:`rlprune.pruning.options`): parts to leave unpruned and
    attention head counts. Refusals name these keys."""

    # module or parameter names, or glob patterns (blocks.*.attn): left as they are, with every unit coupled to them
    ignore: list[str] = Field(default_factory=list)
    # attention module name (or pattern) -> its head count, or the name of the int attribute that holds it
    heads: dict[str, int | str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid(self) -> PruneConfig:
        from rlprune.pruning.options import PruneOptions

        try:
            PruneOptions.of(self.ignore, self.heads)
        except RLPruneError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None
        return self


class ProxyConfig(Strict):
    """How candidates are scored: BN recalibration, validation subset, optional short fine-tune."""

    recal_batches: int = Field(20, ge=0)
    recal_batch_size: int = Field(64, ge=1)
    val_images: int | None = Field(2000, ge=1)
    # a few SGD steps before recalibration rank plans closer to their fine-tuned accuracy, for about a second more per
    # plan (benchmarks/results/proxy_fidelity.md)
    finetune_steps: int = Field(10, ge=0)
    finetune_lr: float = Field(0.01, gt=0)
    importance: str = "l1"
    amp: Literal["auto", "bf16", "off"] = "auto"
    # Which validation subset and recalibration batches: independent of the search seed, so that searches with
    # different seeds (and different searchers) score plans on identical data and their accuracies compare.
    seed: Seed = 0

    @field_validator("importance")
    @classmethod
    def _known_criterion(cls, v: str) -> str:
        from rlprune.pruning.importance import CRITERIA

        if v not in CRITERIA:
            raise ValueError(f"unknown importance criterion '{v}'; expected one of {', '.join(sorted(CRITERIA))}")
        return v


class LatencyConfig(Strict):
    """Latency measurement for latency budgets and rewards (a per-layer lookup table is built once per run)."""

    batch_size: int = Field(1, ge=1, le=4096)  # the bounds a saved policy's record is read under
    threads: int | None = Field(None, ge=1)
    calibration_plans: int = Field(8, ge=0, le=1000)  # plans at the budget timed for real to refit the table (0: none)
    # where latency is timed: PyTorch eager, or the deployment runtime (ONNX Runtime, fp32 or static int8)
    runtime: Literal["torch", "onnxruntime", "onnxruntime-int8"] = "torch"


class AgentConfig(Strict):
    """The RL agent: algorithm by name, how many episodes (evaluated plans), hyperparameter overrides."""

    algorithm: Literal["ppo", "ddpg", "sac", "td3"] = "ppo"
    episodes: int = Field(300, ge=1)
    checkpoint_every: int = Field(20, ge=0)
    hyperparams: dict[str, Any] = Field(default_factory=dict)
    # start from this saved policy's weights instead of a fresh network (few-shot adaptation of a learned policy; the
    # env's action scaling, prior, budget kind and feature set must be the policy's)
    init_policy: str | None = Field(None, min_length=1, max_length=4096)


class FinetuneConfig(Strict):
    """Fine-tuning the best plan after a search (``rlprune run``)."""

    epochs: int = Field(1, ge=1)
    lr: float = Field(0.02, gt=0)
    distill: bool = True
    batch_size: int = Field(128, ge=1)
    swa_epochs: int = Field(0, ge=0)
    swa_lr: float | None = Field(None, gt=0)
    steps_per_epoch: int | None = Field(None, ge=1)  # cap per epoch (smoke runs, CI); None = the whole split
    quantize: Literal["int8"] | None = None  # also quantize the pruned model (ONNX Runtime static int8) and report it

    @model_validator(mode="after")
    def _swa_fits(self) -> FinetuneConfig:
        if self.swa_epochs > self.epochs:
            raise ValueError(f"swa_epochs ({self.swa_epochs}) exceeds epochs ({self.epochs})")
        if self.swa_lr is not None and self.swa_lr > self.lr:
            raise ValueError(f"swa_lr ({self.swa_lr}) exceeds lr ({self.lr})")
        return self

    @property
    def swa(self) -> dict[str, float] | None:
        """The SWA settings (the lr decays to ``swa_lr``, default half of ``lr``, by their start), or None when off."""
        if not self.swa_epochs:
            return None
        return {"epochs": self.swa_epochs, "lr": self.swa_lr if self.swa_lr is not None else self.lr / 2}

    def train_config(self) -> TrainConfig:
        """The training engine's recipe for this fine-tune: no warm-up, weight decay 5e-4, distillation at weight 0.5
        and temperature 4 when ``distill``."""
        return TrainConfig(
            epochs=self.epochs,
            lr=self.lr,
            warmup_epochs=0,
            weight_decay=5e-4,
            distill=DistillConfig(weight=0.5 if self.distill else 0.0, temperature=4.0),
            swa=SWAConfig(**(self.swa or {})),
            steps_per_epoch=self.steps_per_epoch,
        )


class RoundsConfig(Strict):
    """Iterative pruning for ``rlprune run``: per round, search (or apply ``policy``) on the model the previous round
    left, prune to the round's MACs target — a ratio of the *original* dense model's MACs — and fine-tune.

    Give the targets (``rounds: [0.8, 0.65, 0.5]`` is shorthand for ``targets``), or ``count`` rounds of the
    polynomial schedule from the dense model down to ``env.target`` (:func:`rlprune.pruning.rounds.
    polynomial_schedule`; cubic: the big cut first). Each round is saved in ``runs/<name>/round_<k>/``, so a killed
    run resumes at its first unfinished round.
    """

    targets: list[float] | None = None
    count: int | None = Field(None, ge=1)
    power: float = Field(3.0, gt=0)
    policy: str | None = None  # a saved policy (run directory or policy.json) applied per round instead of a search
    episodes: int | None = Field(None, ge=1)  # plans searched per round (default: agent.episodes)
    finetune_epochs: int | None = Field(None, ge=1)  # fine-tune epochs per round (default: finetune.epochs)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"targets": value} if isinstance(value, list) else value

    @model_validator(mode="after")
    def _one_schedule(self) -> RoundsConfig:
        if (self.targets is None) == (self.count is None):
            raise ValueError("give either targets (a list of MACs ratios) or count (a polynomial schedule)")
        t = self.targets
        if t is not None and (not t or not all(0 < v <= 1 for v in t) or any(a <= b for a, b in pairwise(t))):
            raise ValueError(f"targets must be decreasing MACs ratios in (0, 1], got {t}")
        return self

    def schedule(self, final: float) -> list[float]:
        """The per-round MACs targets (ratios of the dense model's MACs), ending at ``final``."""
        if self.targets is not None:
            return list(self.targets)
        from rlprune.pruning.rounds import polynomial_schedule

        assert self.count is not None
        return polynomial_schedule(1.0, final, self.count, self.power)


class PrePrunedConfig(Strict):
    """Extra training models for a search over several checkpoints: each checkpoint also enters as ``copies`` copies
    pruned by random per-unit ratios in ``[0, max_ratio]`` and healed by a short distillation from it. A policy
    trained on a few evenly-widened networks only ever sees units close to their model's median width; these copies
    show it thin and uneven units (as in MobileNet bottlenecks) and what cutting them costs (docs/generalize.md)."""

    copies: int = Field(1, ge=1, le=8)  # per checkpoint
    max_ratio: float = Field(0.7, gt=0, lt=1)  # each unit's pruning ratio is drawn uniformly in [0, max_ratio]
    heal_steps: int = Field(200, ge=0)  # SGD steps of distillation from the checkpoint, on augmented training batches
    heal_lr: float = Field(0.01, gt=0)
    heal_batch_size: int = Field(128, ge=1)
    # how often a copy is drawn relative to a checkpoint (1: every model equally often)
    weight: float = Field(1.0, gt=0)


class SearchConfig(Strict):
    """``rlprune train`` / ``rlprune search``: learn a pruning policy for a trained checkpoint."""

    name: RunName
    seed: Seed = 0
    device: Device = "cpu"
    threads: int | None = Field(None, ge=1)
    workers: int = Field(1, ge=1)  # >1: score plans on that many Ray actors (rlprune.searching.pool; rlprune[ray])
    ray_address: str | None = None  # None: a local Ray instance; "auto" or host:port joins a running cluster
    output_dir: str = "runs"
    checkpoint: str | None = None  # the dense model; not needed when the search is given a scorer (Python API)
    # several dense models: each episode draws one (and a target in env.target's range) and one policy learns them all
    checkpoints: list[str] | None = None
    pre_pruned: PrePrunedConfig | None = None  # with checkpoints: randomly pruned, healed copies as more models
    # rlprune run only: roll this learned policy out on the checkpoint at env.target instead of searching (zero-shot)
    policy: str | None = None
    data_root: str | None = None
    env: EnvConfig = Field(default_factory=EnvConfig)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    rounds: RoundsConfig | None = None  # ``rlprune run`` in iterative rounds (None: one search, one fine-tune)

    @model_validator(mode="after")
    def _rounds_fit(self) -> SearchConfig:
        if self.rounds is None:
            return self
        if not isinstance(self.env.target, float | int) or self.env.budget != "macs":
            raise ValueError("rounds need a single MACs target (env.target a number, env.budget macs)")
        last = self.rounds.schedule(float(self.env.target))[-1]
        if abs(last - self.env.target) > 1e-9:
            raise ValueError(f"the last round's target ({last}) must be env.target ({self.env.target})")
        epochs = self.rounds.finetune_epochs
        if epochs is not None and self.finetune.swa_epochs > epochs:
            raise ValueError(
                f"rounds.finetune_epochs ({epochs}) is below finetune.swa_epochs ({self.finetune.swa_epochs})"
            )
        if any(isinstance(v, int) for v in self.prune.heads.values()):
            raise ValueError(
                "rounds: after a round cuts heads, the head counts prune.heads gives as numbers are wrong; name the "
                "attribute that holds each count instead"
            )
        return self

    @model_validator(mode="after")
    def _several_models(self) -> SearchConfig:
        if self.policy is not None and not isinstance(self.env.target, float | int):
            raise ValueError("policy: applying a policy needs one env.target, not a range")
        if self.policy is not None and self.rounds is not None:
            raise ValueError("policy: with rounds, name the policy in rounds.policy")
        if self.checkpoints is None:
            if self.pre_pruned is not None:
                raise ValueError("pre_pruned: adds copies of the models in 'checkpoints'; give 'checkpoints'")
            return self
        if self.policy is not None:
            raise ValueError("policy: applies to one checkpoint, not to 'checkpoints'")
        if self.pre_pruned is not None:
            if self.env.granularity != "channel":
                raise ValueError("pre_pruned: copies are cut by channels; env.granularity must be channel")
            if any(isinstance(v, int) for v in self.prune.heads.values()):
                raise ValueError(
                    "pre_pruned: a copy with heads cut no longer has the head counts prune.heads gives as numbers; "
                    "name the attribute that holds each count instead"
                )
            copies = {
                f"{model_label(c)}-pruned{k}" for c in self.checkpoints for k in range(1, self.pre_pruned.copies + 1)
            }
            if clash := sorted(copies & {model_label(c) for c in self.checkpoints}):
                raise ValueError(f"checkpoints: {clash[0]} is also the name of a pre_pruned copy; rename the file")
        if self.checkpoint is not None:
            raise ValueError("give 'checkpoint' (one model) or 'checkpoints' (several), not both")
        if not self.checkpoints or not all(self.checkpoints):
            raise ValueError("checkpoints: expected a non-empty list of checkpoint paths")
        labels = [model_label(c) for c in self.checkpoints]
        if len(set(labels)) != len(labels):
            raise ValueError(f"checkpoints: two checkpoints share a file name ({labels}); each needs its own")
        if self.env.budget != "latency" and "reward" not in self.env.model_fields_set:
            # raw accuracies of different models and budgets are not on one scale (docs/generalize.md)
            self.env.reward = MULTI_MODEL_REWARD
        if self.env.budget == "latency" or self.env.reward == "accuracy_latency":
            raise ValueError(
                "checkpoints: a search over several models supports MACs or parameter budgets and rewards, not latency "
                "(env.budget: macs or params; env.reward: not accuracy_latency)"
            )
        return self


MULTI_MODEL_REWARD = "gain_over_uniform"  # the default reward of a search over several checkpoints


def model_label(checkpoint: str) -> str:
    """How a model of a several-checkpoint search is named in its records: the checkpoint's file name, less
    ``.json`` / ``.safetensors``."""
    name = Path(checkpoint).name
    for suffix in (".json", ".safetensors"):
        name = name.removesuffix(suffix)
    return name
