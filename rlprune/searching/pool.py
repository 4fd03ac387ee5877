"""Scale a search out on Ray: a pool of actors that each build the proxy evaluator once and score plans sent to them.

A search's cost is the evaluation of its plans; choosing the next plans is cheap. So the driver keeps everything that
decides (agent, searcher, environment, recorder) and only the scoring fans out: ``RayScorer`` has the interface of
the proxy evaluator (``structure``, ``importance``, ``__call__``, ``remember``) plus ``prefetch(plans)``, which scores a
batch of plans on all actors at once. Searchers prefetch a whole batch of candidates before playing their episodes;
``PoolVecEnv`` prefetches the plans of all environments that finish on the same step. The episodes then run exactly as
in-process, answered from the prefetched results, so records, TensorBoard, the best plan and ``--resume`` are the
same code path as with one worker.

Why results do not depend on the worker count: a plan's score is a function of the plan alone (the proxy's
recalibration batches, validation subset and fine-tune batches are fixed at construction from ``proxy.seed``; the
fine-tune loader restarts its epoch-0 generator on every plan), the candidates a baseline proposes do not depend on
when their scores arrive (batches are fixed by the searcher, not by N), and the driver keeps the cache, so which plans
count as ``cached`` is also the same.

Ray is imported only when ``workers > 1``; without it that is a one-line ``RLPruneError``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlprune.envs.layer_pruning import LayerPruningEnv
from rlprune.errors import RLPruneError
from rlprune.evaluation.proxy import proxy_from_checkpoint, scorer_settings
from rlprune.evaluation.scorer import Score
from rlprune.io.reports import SearchSummary
from rlprune.pruning import Plan, Structure

log = logging.getLogger("rlprune.searching.pool")

INSTALL_HINT = "pip install 'rlprune[ray]'"
OBJECT_STORE_BYTES = 256 * 1024**2  # plans and results are a few KB; Ray would otherwise reserve 30% of RAM
_ENV = ("RLPRUNE_DATA", "RLPRUNE_CACHE")  # where actors find the data and its decoded cache, as the driver does
MAX_ATTEMPTS = 4  # evaluations of one plan lost to dying actors before the search gives up


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RLPruneError(f"search.workers > 1 needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


@dataclass(kw_only=True)
class PoolResult(Score):
    """What an actor sends back for a plan (plain data): a :class:`Score` and the validation loss."""

    loss: float = float("nan")


@dataclass
class _Job:
    """A plan on its way through the pool: which actor has it, and how often an actor died on it."""

    key: str
    plan: dict[str, Any]
    actor: int = -1
    ref: Any = None
    attempts: int = 0


def threads_per_worker(workers: int, threads: int | None = None) -> int:
    """CPU threads for each actor: the configured count, else this machine's cores shared out (at least 1).

    Pinning matters: two torch processes with default thread pools on two cores slowed one another 10-20x."""
    if threads:
        return threads
    return max(1, (os.cpu_count() or 1) // workers)


class _Evaluator:
    """Ray actor body: builds its scorer once (model, data, proxy) and scores plans given as dicts."""

    def __init__(self, build: Callable[..., Any], kwargs: dict[str, Any], threads: int) -> None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
        import torch

        torch.set_num_threads(threads)
        self.scorer = build(**kwargs)

    def describe(self) -> dict[str, Any]:
        return {"structure": self.scorer.structure, "importance": getattr(self.scorer, "importance", "l1")}

    def pid(self) -> int:
        return os.getpid()

    def evaluate(self, plan: dict[str, Any]) -> dict[str, Any]:
        result = self.scorer(Plan.from_dict(plan))
        return {
            "accuracy": float(result.accuracy),
            "seconds": float(result.seconds),
            "loss": float(getattr(result, "loss", float("nan"))),
            "metrics": {k: float(v) for k, v in result.metrics.items()},
        }


def copy_of_scorer(scorer: Any) -> Any:
    """Build function for actors handed a ready scorer (a picklable synthetic task in tests): use it as it is."""
    return scorer


def _ensure_ray(address: str | None, workers: int) -> bool:
    """Connect to Ray; returns True when this call started a local instance (so closing the pool stops it)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
        return False
    # Actors import what the driver imports (rlprune from this checkout, test helpers): give them its sys.path.
    path = os.pathsep.join(p for p in sys.path if p)
    ray.init(
        num_cpus=workers,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path, **{k: os.environ[k] for k in _ENV if k in os.environ}}},
    )
    return True


class RayScorer:
    """A pool of ``workers`` Ray actors that score plans; the driver-side face of the proxy evaluator.

    :param build: called in each actor as ``build(**kwargs)`` to make its scorer (e.g. ``proxy_from_checkpoint``
        with the checkpoint path and proxy settings: plain data, so nothing heavy is pickled).
    :param workers: number of actors.
    :param address: a Ray cluster to join (``auto`` or ``host:port``); ``None`` starts a local instance with
        ``workers`` CPUs (or uses the one already started in this process).
    :param threads: torch threads per actor (default: the local cores shared out).
    :param gpus: GPUs each actor reserves (a fraction shares one GPU between actors); 0 on CPU.
    :param model: a callable returning the dense model on the driver, for the latency table (loaded only if needed).
    """

    def __init__(
        self,
        build: Callable[..., Any],
        kwargs: dict[str, Any],
        workers: int,
        *,
        address: str | None = None,
        threads: int | None = None,
        gpus: float = 0.0,
        model: Callable[[], Any] | None = None,
    ) -> None:
        ray = import_ray()
        self._ray = ray
        self.workers = workers
        self._owns_ray = _ensure_ray(address, workers)
        self.threads = threads_per_worker(workers, threads)
        # A dying actor is restarted (it rebuilds its evaluator) and its running task retried by Ray; if Ray's
        # retries run out, prefetch resubmits the plan to the pool itself.
        actor_cls = ray.remote(_Evaluator).options(
            num_cpus=1 if self._owns_ray else self.threads,
            num_gpus=gpus,
            max_restarts=MAX_ATTEMPTS,
            max_task_retries=MAX_ATTEMPTS,
        )
        self.actors = [actor_cls.remote(build, kwargs, self.threads) for _ in range(workers)]
        self._finalizer = weakref.finalize(self, _shutdown, ray, list(self.actors), self._owns_ray)
        try:
            described = ray.get(self.actors[0].describe.remote())
        except Exception as exc:
            self.close()
            raise _unwrap(ray, exc) from None
        self.structure: Structure = described["structure"]
        self.importance: str = described["importance"]
        self._model_fn = model
        self._model: Any | None = None
        self._cache: dict[str, PoolResult] = {}
        self._jobs: dict[str, _Job] = {}  # submitted, not yet handed to an episode
        self._load = [0] * workers  # plans queued on each actor
        self.evaluated = 0
        self.resubmitted = 0

    @property
    def model(self) -> Any | None:
        """The dense model on the driver (for the latency table), loaded on first use; ``None`` if unknown."""
        if self._model is None and self._model_fn is not None:
            self._model = self._model_fn()
        return self._model

    def remember(self, plan: Plan, accuracy: float, metrics: Mapping[str, float] | None = None) -> None:
        """Seed the cache with a recorded result and its metrics (a resumed search re-evaluates nothing)."""
        recorded = {k: float(v) for k, v in (metrics or {}).items()}
        self._cache[plan.key()] = PoolResult(accuracy=float(accuracy), seconds=0.0, metrics=recorded)

    def prefetch(self, plans: Iterable[Plan]) -> None:
        """Queue the plans not yet known on the actors and return at once; an episode that ends in one of them waits
        for its result. Each plan goes to the actor with the fewest queued, so all stay busy while the driver plays
        the episodes of the previous batch."""
        for plan in plans:
            plan.check(self.structure)
            key = plan.key()
            if key not in self._cache and key not in self._jobs:
                self._submit(_Job(key, plan.to_dict()))

    def _submit(self, job: _Job, avoid: int | None = None) -> None:
        def load(i: int) -> tuple[bool, int, int]:  # the actor that just died on this plan goes last
            return (i == avoid, self._load[i], i)

        job.actor = min(range(len(self.actors)), key=load)
        self._load[job.actor] += 1
        job.ref = self.actors[job.actor].evaluate.remote(job.plan)
        self._jobs[job.key] = job

    def _collect(self, key: str) -> PoolResult:
        """Wait for a submitted plan's result; a plan whose actor died (after Ray's own restarts and retries) is
        submitted again, preferably to another actor."""
        ray = self._ray
        lost = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError)
        while True:
            job = self._jobs.pop(key)
            try:
                out = ray.get(job.ref)
            except lost:
                job.attempts += 1
                if job.attempts >= MAX_ATTEMPTS:
                    raise RLPruneError(
                        f"search.workers: plan {key[:12]} lost its actor {job.attempts} times; giving up"
                    ) from None
                log.warning("actor %d died evaluating plan %s; re-running it on the pool", job.actor, key[:12])
                self.resubmitted += 1
                self._submit(job, avoid=job.actor)
                continue
            except Exception as exc:
                raise _unwrap(ray, exc) from None
            finally:
                self._load[job.actor] -= 1
            self.evaluated += 1
            return PoolResult(**out)

    def __call__(self, plan: Plan) -> PoolResult:
        key = plan.key()
        if key in self._cache:
            return PoolResult(**{**self._cache[key].__dict__, "cached": True})
        if key not in self._jobs:
            self.prefetch([plan])
        result = self._cache[key] = self._collect(key)
        return result

    def actor_pids(self) -> list[int]:
        """Process ids of the actors (tests kill one)."""
        return self._ray.get([a.pid.remote() for a in self.actors])

    def close(self) -> None:
        """Stop the actors (and the local Ray instance if this pool started it)."""
        self._finalizer()


def _shutdown(ray: Any, actors: list[Any], owns_ray: bool) -> None:
    for actor in actors:
        with contextlib.suppress(Exception):  # already gone: nothing to stop
            ray.kill(actor, no_restart=True)
    if owns_ray:
        ray.shutdown()


def _unwrap(ray: Any, exc: Exception) -> Exception:
    """The error an actor raised (an ``RLPruneError`` stays one line), not Ray's wrapper."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception):
            return cause
    return exc


def pool_for_config(cfg: Any, workers: int, scorer: Any | None = None, trust_model_code: bool = False) -> RayScorer:
    """The actor pool for a search config: each actor builds the proxy evaluator from ``cfg.checkpoint`` and the
    proxy settings, or (tests) gets a copy of the picklable ``scorer``."""
    device = str(cfg.device)
    gpus = 0.0
    if scorer is None:
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda"):
            if cfg.ray_address:
                _ensure_ray(cfg.ray_address, workers)
                total = float(import_ray().cluster_resources().get("GPU", 0.0))
            else:
                total = float(torch.cuda.device_count())
            if total <= 0:
                raise RLPruneError(f"device: '{cfg.device}' but Ray sees no GPU; use device cpu")
            gpus = min(1.0, total / workers)
            device = "cuda"  # Ray sets CUDA_VISIBLE_DEVICES for each actor
        kwargs = {
            "checkpoint": cfg.checkpoint,
            "data_root": cfg.data_root,
            "device": device,
            "trust_model_code": trust_model_code,
            **scorer_settings(cfg),
        }

        def dense() -> Any:
            from rlprune.io.checkpoint import load_checkpoint

            return load_checkpoint(cfg.checkpoint, trust_model_code=trust_model_code)[0].cpu().eval()

        return RayScorer(
            proxy_from_checkpoint,
            kwargs,
            workers,
            address=cfg.ray_address,
            threads=cfg.threads,
            gpus=gpus,
            model=dense,
        )
    return RayScorer(copy_of_scorer, {"scorer": scorer}, workers, address=cfg.ray_address, threads=cfg.threads)


def run_pooled(
    run: Callable[..., SearchSummary], cfg: Any, workers: int, scorer: Any | None, **kw: Any
) -> SearchSummary:
    """Run ``run(cfg, scorer=pool, **kw)`` (``run_search``) with an actor pool, stopping the actors afterwards."""
    import torch

    cfg = cfg.model_copy(update={"workers": workers})  # the run directory's config.yaml says how it ran
    pool = pool_for_config(cfg, workers, scorer, trust_model_code=kw.get("trust_model_code", False))
    threads = torch.get_num_threads()
    if not cfg.threads:
        torch.set_num_threads(1)  # the driver only decides; its idle thread pool would spin on the actors' cores
    try:
        return run(cfg, scorer=pool, **kw)
    finally:
        torch.set_num_threads(threads)
        pool.close()


# ------------------------------------------------------------------------------------------ plans ahead of episodes
def plan_of(env: LayerPruningEnv, actions: Sequence[float] | np.ndarray, seed: int | None) -> Plan:
    """The plan an episode with these actions and reset seed ends in, without scoring it (what ``run_episode``
    will then play; the scorer answers it from the prefetched results)."""
    env.reset(seed=seed)
    episode = env.episode
    for a in actions:
        episode.decide(np.array([a], dtype=np.float32))
        if episode.done:
            break
        episode.observe()
    return env.make_plan()


def plan_after(env: LayerPruningEnv, action: np.ndarray) -> Plan | None:
    """If ``action`` ends the episode, the plan it ends in (the environment's own episode is left as it was)."""
    if env.t != len(env.units) - 1:
        return None
    episode = env.episode.fork()
    episode.decide(action)
    return episode.plan(env.scorer.importance)


def prefetch_episodes(
    env: LayerPruningEnv, episodes: Sequence[tuple[Sequence[float] | np.ndarray, int | None]]
) -> None:
    """Score the plans of these (actions, seed) episodes in parallel if the env's scorer is a pool; else nothing."""
    fetch = getattr(env.scorer, "prefetch", None)
    if fetch is not None and episodes:
        fetch([plan_of(env, actions, seed) for actions, seed in episodes])


def clone_env(env: LayerPruningEnv) -> LayerPruningEnv:
    """Another environment over the same scorer, structure, latency table and recorder, with its own episode state
    and random generator."""
    return env.clone()


def pool_vec_env(env: LayerPruningEnv, n: int) -> Any:
    """``n`` copies of ``env`` as an SB3 VecEnv whose terminal evaluations run on the pool in parallel."""
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    class PoolVecEnv(DummyVecEnv):
        """Steps its environments in order (so records keep a fixed order), after scoring at once the plans of all
        environments whose episode ends on this step."""

        def __init__(self, envs: list[LayerPruningEnv]) -> None:
            super().__init__([lambda e=e: Monitor(e) for e in envs])
            self.units = envs[0].units
            self._raw = envs

        def step_wait(self) -> Any:
            plans = [p for e, a in zip(self._raw, self.actions, strict=True) if (p := plan_after(e, a)) is not None]
            fetch = getattr(self._raw[0].scorer, "prefetch", None)
            if plans and fetch is not None:
                fetch(plans)
            return super().step_wait()

    return PoolVecEnv([env] + [clone_env(env) for _ in range(n - 1)])
