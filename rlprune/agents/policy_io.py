"""Shareable policies: the policy network's weights as safetensors plus JSON metadata.

stable-baselines3's ``.zip`` files unpickle cloudpickled objects on load, so a policy received from someone else is
never loaded that way. Here the policy class is rebuilt from the JSON (algorithm, network sizes, spaces) and only
tensors are read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from stable_baselines3.common.base_class import BaseAlgorithm

from rlprune.envs.features import FEATURE_VERSION, check_envelope, feature_spec
from rlprune.errors import RLPruneError
from rlprune.io.files import atomic_write_text, read_json
from rlprune.io.safe import clip, writing
from rlprune.io.schemas import PolicyMeta, validated

POLICY_FORMAT = "rlprune-policy/1"


def policy_paths(path: str | Path) -> tuple[Path, Path]:
    """Map a directory (its ``policy.*``), ``x``, ``x.json`` or ``x.safetensors`` to the (weights, sidecar) pair."""
    p = Path(path)
    if p.is_dir():
        p = p / "policy"
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    # appended, not with_suffix: in ``policies/r20_t0.5`` the ``.5`` is part of the name
    return p.parent / f"{p.name}.safetensors", p.parent / f"{p.name}.json"


def save_policy(path: str | Path, agent: BaseAlgorithm, algorithm: str, meta: dict[str, Any]) -> Path:
    """Write a trained SB3 agent's policy as ``policy.safetensors`` + ``policy.json``; returns the JSON path.

    :param meta: action scaling (``min_ratio``, ``max_ratio``), budget, training config, the ``feature_version`` its
        environment observed (default: the current one), ... (JSON-serialisable).
    """
    return Policy(agent.policy, policy_metadata(agent, algorithm, meta)).save(path)


def policy_metadata(agent: BaseAlgorithm, algorithm: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The ``policy.json`` of a trained agent: format, algorithm, feature set and network settings, then ``meta``.
    A search builds it (as a :class:`Policy`, which checks it) before its first episode, so settings no policy file
    may hold are refused before any work rather than at the first save."""
    spec = feature_spec(int(meta.get("feature_version", FEATURE_VERSION)))
    return {
        "format": POLICY_FORMAT,
        "algorithm": algorithm,
        "feature_version": spec.version,
        "features": list(spec.names),
        "policy_kwargs": _plain(agent.policy_kwargs),
        **meta,
    }


def _plain(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keep only JSON-representable policy kwargs (network sizes); classes such as activations are named."""
    out: dict[str, Any] = {}
    for k, v in (kwargs or {}).items():
        if isinstance(v, type):
            out[k] = f"{v.__module__}.{v.__name__}"
        elif isinstance(v, int | float | str | bool | list | dict | type(None)):
            out[k] = v
    return out


def _json_default(value: Any) -> Any:
    """NumPy and 0-d torch numbers as numbers (a target ``np.float32(0.5)`` stays a number), anything else as text."""
    if isinstance(value, np.generic | torch.Tensor) and getattr(value, "ndim", 0) == 0:
        return value.item()
    return str(value)


_ACTIVATIONS = {"torch.nn.modules.activation.Tanh": torch.nn.Tanh, "torch.nn.modules.activation.ReLU": torch.nn.ReLU}


class Policy:
    """A learned pruning policy rebuilt from weights + JSON (nothing unpickled): ``act(obs) -> action in [-1, 1]``.

    ``meta`` holds how it was trained, as saved in ``policy.json`` (algorithm, action scaling
    ``min_ratio``/``max_ratio``, ``round_to``, budget kind and target range, importance criterion, the models and
    config it was trained on); ``info`` is the same, validated (:class:`~rlprune.io.schemas.PolicyMeta`): what
    applying it reads. Apply it to any model with :func:`rlprune.apply_policy`.
    """

    def __init__(self, policy: torch.nn.Module, meta: Mapping[str, Any], info: PolicyMeta | None = None) -> None:
        self.policy = policy  # a loaded policy is put in eval mode by load_policy; a live agent's is left alone
        self.meta = dict(meta)
        if info is None:  # a policy built in memory: its metadata checked as a saved one's is
            try:
                plain = json.loads(json.dumps(self.meta, default=_json_default, allow_nan=False))
            except ValueError as exc:
                raise RLPruneError(f"policy metadata holds a non-finite number ({exc})") from None
            info = validated(PolicyMeta, plain, "policy metadata")
        self.info: PolicyMeta = info

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Load ``policy.safetensors`` + ``policy.json`` (a run directory, either file, or their common stem)."""
        return load_policy(path)

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` + ``<path>.json`` (or ``policy.*`` inside a directory); returns the JSON."""
        weights, sidecar = policy_paths(path)
        try:  # the metadata first: refused metadata must not leave new weights beside an older policy's JSON
            text = json.dumps(self.meta, indent=1, default=_json_default, allow_nan=False)
        except ValueError as exc:
            raise RLPruneError(f"{sidecar}: policy metadata holds a non-finite number ({exc})") from None
        weights.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.policy.state_dict().items()}
        tmp = weights.with_name(f".{weights.name}.tmp")
        with writing(weights):
            try:
                save_file(state, str(tmp))
                tmp.replace(weights)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        atomic_write_text(sidecar, text + "\n")
        return sidecar

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        action, _ = self.policy.predict(obs, deterministic=True)
        return np.asarray(action, dtype=np.float32).reshape(1)

    def sampler(self, seed: int) -> Callable[[np.ndarray], np.ndarray]:
        """``act`` that draws from the policy's own Gaussian (mean, learned std), clipped to [-1, 1] as in training.

        Draws come from ``numpy.random.default_rng(seed)``, so a seed fixes the sequence of plans.
        """
        if not hasattr(self.policy, "get_distribution"):
            raise RLPruneError(
                f"a {self.info.algorithm} policy has no action distribution to sample plans from (needs ppo)"
            )
        rng = np.random.default_rng(seed)

        @torch.no_grad()
        def act(obs: np.ndarray) -> np.ndarray:
            dist = self.policy.get_distribution(torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1)).distribution
            mean, std = float(dist.mean.reshape(-1)[0]), float(dist.stddev.reshape(-1)[0])
            return np.clip(np.float32([mean + std * rng.standard_normal()]), -1.0, 1.0)

        return act


def network_kwargs(meta: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The ``policy_kwargs`` a policy's network was built with, as SB3 takes them (activations rebuilt by name)."""
    kwargs = {k: v for k, v in meta.get("policy_kwargs", {}).items() if v is not None}
    if "activation_fn" in kwargs:
        # only activations named here are rebuilt (nothing named in a file is imported); any other is refused, since
        # a stand-in would silently change every action (SB3's default is Tanh for PPO, ReLU for DDPG/TD3/SAC)
        named = kwargs["activation_fn"]
        if isinstance(named, type):
            return kwargs
        if named not in _ACTIVATIONS:
            raise RLPruneError(
                f"{source}: policy_kwargs.activation_fn {clip(str(named), 40)!r} is not one rlprune rebuilds "
                f"(expected one of {', '.join(sorted(_ACTIVATIONS))})"
            )
        kwargs["activation_fn"] = _ACTIVATIONS[named]
    return kwargs


def load_policy(path: str | Path) -> Policy:
    """Rebuild a saved policy without unpickling; its observation size is its own feature set's (any version this
    rlprune knows; a newer one is refused in one line)."""
    weights, sidecar = policy_paths(path)
    meta = read_json(sidecar, "policy metadata")
    if not isinstance(meta, dict) or meta.get("format") != POLICY_FORMAT:
        raise RLPruneError(f"{sidecar}: not an rlprune policy (expected format '{POLICY_FORMAT}')")
    checked = validated(PolicyMeta, meta, str(sidecar))  # types, ranges, finite numbers, network settings
    # the values as parsed replace the file's ("0.5" -> 0.5, 8.0 -> 8): what is used below is what was checked
    meta.update(checked.model_dump(mode="json", exclude_unset=True, exclude={"feature_envelope"}))
    try:
        spec = feature_spec(meta["feature_version"])
    except RLPruneError as exc:
        raise RLPruneError(f"{sidecar}: {exc}") from None
    if checked.feature_envelope is not None:
        meta["feature_envelope"] = checked.feature_envelope.model_dump()  # numbers as parsed
        try:
            check_envelope(meta["feature_envelope"], spec.version)
        except RLPruneError as exc:
            raise RLPruneError(f"{sidecar}: {exc}") from None
    from rlprune.agents.sb3_agents import policy_class
    from rlprune.io.checkpoint import fit_weights

    kwargs = network_kwargs(meta, str(sidecar))
    obs_space = spaces.Box(0.0, 1.0, (spec.size,), dtype=np.float32)
    act_space = spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
    algorithm = meta["algorithm"]
    try:
        policy = policy_class(algorithm)(obs_space, act_space, lambda _: 0.0, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError, ArithmeticError) as exc:
        why = clip(str(exc), 80)
        raise RLPruneError(f"{sidecar}: policy_kwargs do not build a {algorithm} policy ({why})") from None
    if not weights.is_file():
        raise RLPruneError(f"{weights}: policy weights not found")
    try:
        state = load_file(str(weights))
    except (OSError, SafetensorError) as exc:
        raise RLPruneError(f"{weights}: unreadable safetensors file ({clip(str(exc), 80)})") from None
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise RLPruneError(f"{weights}: '{key[:60]}' holds non-finite values; the policy is corrupt")
    fit_weights(policy, state, f"{weights} ({algorithm} policy)")
    return Policy(policy.eval(), meta, checked)
