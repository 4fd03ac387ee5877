"""Fuzzing every loader of a file a user can be handed (issue 18): configs, plans, checkpoint sidecars, policy JSON,
``episodes.jsonl`` and data archives. Random and mutated inputs must either load or raise :class:`RLPruneError`;
any other exception (a TypeError, a RecursionError, a MemoryError) is a bug. Nothing here trains: the files are
written by the library's own save functions from untrained tiny models, then mutated."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlprune.agents.policy_io import load_policy, save_policy
from rlprune.config import SearchConfig, load_config
from rlprune.data.sources import read_image_folder
from rlprune.errors import RLPruneError
from rlprune.io.checkpoint import load_checkpoint, save_checkpoint
from rlprune.io.safe import parse_json, parse_yaml
from rlprune.jobs.apply import check_policy_target, outside_training, policy_plans
from rlprune.models import build_model
from rlprune.pruning import Plan, analyze
from rlprune.searching.recorder import SearchRecorder

FUZZ = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# JSON-like values, including the nasty ones: huge and non-finite numbers, deep lists, long strings.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12
)


def _set_path(doc: Any, path: list[int], value: Any) -> Any:
    """Replace the value reached by following ``path`` (indices into keys/items, modulo their count) with ``value``."""
    node = doc
    for step in path[:-1]:
        children = list(node.values()) if isinstance(node, dict) else node if isinstance(node, list) else None
        if not children or not isinstance(children[step % len(children)], dict | list):
            break
        node = children[step % len(children)]
    if isinstance(node, dict) and node:
        node[list(node)[path[-1] % len(node)]] = value
    elif isinstance(node, list) and node:
        node[path[-1] % len(node)] = value
    return doc


mutations = st.tuples(st.lists(st.integers(0, 50), min_size=1, max_size=5), values)


def _mutate_bytes(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for at, byte in flips:
        out[at % len(out)] = byte
    return bytes(out[:cut] if cut is not None else out)


byte_edits = st.tuples(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6), st.none() | st.integers(0, 10**4)
)


def _only_rlprune_errors(fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except RLPruneError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 600, str(exc)[:700]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch

    from rlprune.agents.sb3_agents import policy_class
    from rlprune.envs.features import FEATURE_VERSION, N_FEATURES, feature_envelope, static_features

    tmp = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=3, width=4)
    meta = {
        "model": "resnet20",
        "model_kwargs": {"num_classes": 3, "width": 4},
        "classes": ["a", "b", "c"],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "in_channels": 3,
        "input_size": 32,
        "dataset": {"name": "imagefolder", "root": "x", "val_size": 6, "split_seed": 0, "input_size": 32},
    }
    sidecar = save_checkpoint(tmp / "model", model, meta)
    structure = analyze(model.eval(), torch.zeros(1, 3, 32, 32))
    plan = Plan.from_ratios(structure, [0.25] * len(structure.units), model="resnet20")
    plan_path = plan.save(tmp / "plan.json")
    from gymnasium import spaces

    obs = spaces.Box(0.0, 1.0, (N_FEATURES,), dtype=np.float32)
    act = spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
    kwargs = {"net_arch": [8, 8], "log_std_init": -0.5}
    policy = policy_class("ppo")(obs, act, lambda _: 0.0, **kwargs)
    agent = SimpleNamespace(policy=policy, policy_kwargs=kwargs)
    envelope = feature_envelope([static_features(structure)], FEATURE_VERSION)  # mutated by the fuzzer too
    meta = {"min_ratio": 0.0, "max_ratio": 0.8, "target": 0.5, "feature_envelope": envelope}
    policy_json = save_policy(tmp / "policy", agent, "ppo", meta)
    assert json.loads(policy_json.read_text())["feature_version"] == FEATURE_VERSION
    record = {
        "episode": 1,
        "reward": 0.5,
        "accuracy": 50.0,
        "macs_ratio": 0.5,
        "latency_ratio": None,
        "target": 0.5,
        "ratios": [0.25] * len(structure.units),
        "eval_seconds": 0.1,
        "wall_seconds": 0.2,
        "cached": False,
        "plan": plan.to_dict(),
    }
    config = {"name": "x", "checkpoint": str(sidecar), "env": {"target": 0.5}, "agent": {"episodes": 3}}
    return {
        "tmp": tmp,
        "sidecar": sidecar,
        "model": model.eval(),
        "structure": structure,
        "plan": plan_path,
        "policy": policy_json,
        "record": record,
        "config": config,
    }


@FUZZ
@given(text=st.text(max_size=200))
def test_yaml_and_json_parsers_on_random_text(text: str) -> None:
    _only_rlprune_errors(parse_yaml, text, "fuzz.yaml")
    _only_rlprune_errors(parse_json, text, "fuzz.json")


@FUZZ
@given(mutation=mutations)
def test_config_loader_on_mutated_configs(files: dict[str, Any], mutation: tuple[list[int], Any]) -> None:
    path = files["tmp"] / "config.yaml"
    doc = json.loads(json.dumps(files["config"]))
    try:
        path.write_text(json.dumps(_set_path(doc, *mutation)))  # JSON is YAML; NaN/Infinity become .nan-like text
    except ValueError:
        return
    _only_rlprune_errors(load_config, path, SearchConfig)


@FUZZ
@given(mutation=mutations, edits=byte_edits)
def test_plan_loader_on_mutated_plans(
    files: dict[str, Any], mutation: tuple[list[int], Any], edits: tuple[list[tuple[int, int]], int | None]
) -> None:
    path = files["tmp"] / "fuzz_plan.json"
    doc = _set_path(json.loads(files["plan"].read_text()), *mutation)
    path.write_text(json.dumps(doc))
    for structure in (None, files["structure"]):
        _only_rlprune_errors(lambda s=structure: Plan.load(path, s).check(files["structure"]))
    path.write_bytes(_mutate_bytes(files["plan"].read_bytes(), *edits))
    _only_rlprune_errors(lambda: Plan.load(path, files["structure"]).check(files["structure"]))


@FUZZ
@given(hand=values)
def test_hand_written_plans(files: dict[str, Any], hand: Any) -> None:
    path = files["tmp"] / "hand_plan.json"
    path.write_text(json.dumps({"ratios": hand} if not isinstance(hand, dict) else hand))
    _only_rlprune_errors(lambda: Plan.load(path, files["structure"]).check(files["structure"]))


@FUZZ
@given(mutation=mutations, edits=byte_edits)
def test_checkpoint_loader_on_mutated_sidecars(
    files: dict[str, Any], mutation: tuple[list[int], Any], edits: tuple[list[tuple[int, int]], int | None]
) -> None:
    folder = files["tmp"] / "ck"
    folder.mkdir(exist_ok=True)
    weights = files["sidecar"].with_suffix(".safetensors")
    (folder / "model.safetensors").write_bytes(weights.read_bytes())
    doc = _set_path(json.loads(files["sidecar"].read_text()), *mutation)
    (folder / "model.json").write_text(json.dumps(doc))
    _only_rlprune_errors(load_checkpoint, folder / "model.json")
    (folder / "model.json").write_bytes(_mutate_bytes(files["sidecar"].read_bytes(), *edits))
    _only_rlprune_errors(load_checkpoint, folder / "model.json")


@FUZZ
@given(mutation=mutations, edits=byte_edits)
def test_policy_loader_on_mutated_policies(
    files: dict[str, Any], mutation: tuple[list[int], Any], edits: tuple[list[tuple[int, int]], int | None]
) -> None:
    folder = files["tmp"] / "pol"
    folder.mkdir(exist_ok=True)
    (folder / "policy.safetensors").write_bytes(files["policy"].with_suffix(".safetensors").read_bytes())
    doc = _set_path(json.loads(files["policy"].read_text()), *mutation)
    (folder / "policy.json").write_text(json.dumps(doc))

    def load_and_check() -> None:  # a policy that loads is also compared with a model's units and rolled out on it
        policy = load_policy(folder)
        outside_training(policy.info, files["structure"])
        check_policy_target(policy.info, 0.5, "macs", force=True)
        policy_plans(policy, files["model"], files["structure"], target=0.5, force=True)

    _only_rlprune_errors(load_and_check)
    (folder / "policy.json").write_text(files["policy"].read_text())
    (folder / "policy.safetensors").write_bytes(
        _mutate_bytes(files["policy"].with_suffix(".safetensors").read_bytes(), *edits)
    )
    _only_rlprune_errors(load_policy, folder)


@pytest.mark.parametrize(
    ("edit", "refused"),
    [
        ({"target": "0.5", "round_to": 8.0, "min_ratio": "0.1", "min_channels": "2"}, None),  # as parsed, not as text
        ({"target": [0.7, 0.3]}, "target"),  # a reversed range
        ({"prior": "os.system"}, "prior"),
        ({"config": {"latency": {"batch_size": -1}}}, r"config\.latency\.batch_size"),
        ({"config": {"latency": {"batch_size": "x"}}}, r"config\.latency\.batch_size"),
        ({"config": []}, "config"),
        ({"policy_kwargs": {"net_arch": [4096] * 32}}, "weights"),  # would allocate gigabytes before any check
        ({"algorithm": "sac", "policy_kwargs": {"net_arch": [2048] * 8, "n_critics": 16}}, "weights"),
    ],
)
def test_policy_fields_are_used_as_validated(files: dict[str, Any], edit: dict[str, Any], refused: str | None) -> None:
    """What a policy file says is checked, then used as checked: text numbers are numbers (or the file is refused),
    a range is ordered, a network's size is bounded before it is built; refusals name the field in one line."""
    folder = files["tmp"] / "pol_hand"
    folder.mkdir(exist_ok=True)
    (folder / "policy.safetensors").write_bytes(files["policy"].with_suffix(".safetensors").read_bytes())
    (folder / "policy.json").write_text(json.dumps({**json.loads(files["policy"].read_text()), **edit}))
    if refused is not None:
        with pytest.raises(RLPruneError, match=rf"policy\.json.*{refused}"):
            load_policy(folder)
        return
    policy = load_policy(folder)
    assert policy.meta["target"] == 0.5 and policy.meta["round_to"] == 8 and isinstance(policy.meta["round_to"], int)
    check_policy_target(policy.info, 0.5, "macs")
    (plan,) = policy_plans(policy, files["model"], files["structure"], target=0.5)
    dense = {u.name: u.channels for u in files["structure"].units}
    rounded = [c for name, c in plan.channels.items() if dense[name] > 8]  # units of 8 or fewer are not rounded
    assert plan.round_to == 8 and rounded and all(c % 8 == 0 for c in rounded)


def test_a_policy_named_with_dots_keeps_its_name(files: dict[str, Any], tmp_path: Path) -> None:
    """``r20_t0.5`` and ``r20_t0.3`` are two policies, not one file ``r20_t0`` written twice."""
    import numpy as np

    policy = load_policy(files["policy"])
    policy.meta = {**policy.meta, "target": np.float32(0.5)}  # a NumPy number is stored as a number
    for name in ("r20_t0.5", "r20_t0.3"):
        assert policy.save(tmp_path / name) == tmp_path / f"{name}.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "r20_t0.3.json",
        "r20_t0.3.safetensors",
        "r20_t0.5.json",
        "r20_t0.5.safetensors",
    ]
    assert load_policy(tmp_path / "r20_t0.3.json").meta["target"] == 0.5
    # refused metadata leaves the saved pair as it was: no new weights beside the old JSON
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    policy.meta = {**policy.meta, "target": float("nan")}
    with pytest.raises(RLPruneError, match="non-finite"):
        policy.save(tmp_path / "r20_t0.5")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@FUZZ
@given(lines=st.lists(st.one_of(mutations, st.binary(max_size=80)), max_size=6))
def test_recorder_keeps_every_valid_record(files: dict[str, Any], lines: list[Any]) -> None:
    run = files["tmp"] / "rec"
    run.mkdir(exist_ok=True)
    body, valid = [], 0
    for item in lines:
        if isinstance(item, bytes):
            body.append(item.replace(b"\n", b" "))
            continue
        record = _set_path(json.loads(json.dumps(files["record"])), *item)
        try:
            body.append(json.dumps(record, allow_nan=False).encode())
        except ValueError:
            continue
    good = json.dumps(files["record"]).encode()
    body.append(good)  # one known-good record after whatever came before: it must survive
    data = b"\n".join(body)
    (run / "episodes.jsonl").write_bytes(data)
    recorder = SearchRecorder(run)
    valid = recorder.episodes
    assert valid >= 1 and valid + len(recorder.skipped) <= len(body)
    assert (run / "episodes.jsonl").read_bytes() in (data, data + b"\n")  # never rewritten


def _tarball(size: int = 8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for split in ("train", "test"):
            for cls in ("a", "b"):
                img = io.BytesIO()
                Image.new("RGB", (size, size), (10, 20, 30)).save(img, format="PNG")
                info = tarfile.TarInfo(f"{split}/{cls}/0.png")
                info.size = len(img.getvalue())
                tar.addfile(info, io.BytesIO(img.getvalue()))
    return buf.getvalue()


@FUZZ
@given(edits=byte_edits)
def test_archive_reader_on_mutated_tarballs(
    files: dict[str, Any], edits: tuple[list[tuple[int, int]], int | None]
) -> None:
    path: Path = files["tmp"] / "data.tar.gz"
    path.write_bytes(_mutate_bytes(_tarball(), *edits))
    _only_rlprune_errors(read_image_folder, path, 8, 3)
