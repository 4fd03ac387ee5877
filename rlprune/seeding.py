"""One call that seeds every source of randomness the project uses."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

# Each random stream of a run draws from its own seed, ``seed + offset`` (distinct primes), so that how much one stream
# draws never shifts another: the proxy's recalibration batches, its fine-tune batches, the healing of pre-pruned
# copies, and a resumed agent's fresh randomness (offset times the episodes already recorded).
RECALIBRATION_STREAM = 7919
PROXY_FINETUNE_STREAM = 104729
HEALING_STREAM = 15485863
RESUME_STREAM = 7919


def stream_seed(seed: int, offset: int, times: int = 1) -> int:
    """The seed of one random stream of a run seeded ``seed``: ``seed + offset * times`` below 2**32 (NumPy, torch
    and stable-baselines3 take seeds in ``[0, 2**32)``)."""
    return (seed + offset * times) % 2**32


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA), so that the same config and seed give the same result."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one CPU thread, then restore the thread count.

    A backward pass on the CPU splits its weight-gradient sums across threads, so a few SGD steps give other weights
    (and a plan another score, by up to a point) on 1 thread than on 2: scores would depend on the machine and on how
    many workers share it. Forward passes and batch-norm statistics do not, so only gradient steps run here.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def on_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` itself when its tensors are already on ``device``, else a copy moved there: a scorer or a timing
    never moves the caller's model (which later steps, such as tracing on the CPU, still use where it was)."""
    import copy

    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())  # where tensors sent to "cuda" go

    def there(t: torch.Tensor) -> bool:
        return t.device.type == device.type and (device.index is None or t.device.index == device.index)

    if all(there(t) for t in (*model.parameters(), *model.buffers())):
        return model
    return copy.deepcopy(model).to(device)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an explicit but unavailable device is an error."""
    from rlprune.errors import RLPruneError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RLPruneError(f"device '{name}': expected cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RLPruneError(f"device: '{name}' requested but CUDA is not available")
    return device
