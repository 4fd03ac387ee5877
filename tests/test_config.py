from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rlprune.config import PretrainConfig, SearchConfig, load_config, write_resolved
from rlprune.errors import RLPruneError

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_shipped_experiment_configs_validate() -> None:
    cfg = load_config(ROOT / "experiments" / "zoo" / "resnet20_cifar10_1_pretrain.yaml", PretrainConfig)
    assert cfg.model.name == "resnet20" and cfg.train.epochs > 0


def test_overrides_are_typed_and_validated(tmp_path: Path) -> None:
    p = _write(tmp_path, {"name": "x"})
    cfg = load_config(
        p, PretrainConfig, ["train.epochs=3", "train.lr=0.05", "data.augment=false", "model.kwargs={width: 8}"]
    )
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.augment, cfg.model.kwargs) == (3, 0.05, False, {"width": 8})
    with pytest.raises(RLPruneError, match="train.epochs"):
        load_config(p, PretrainConfig, ["train.epochs=0"])
    with pytest.raises(RLPruneError, match="expected KEY=VALUE"):
        load_config(p, PretrainConfig, ["train.epochs"])
    # a section left null in the file is started by an override; one written as a list is set whole
    s = _write(tmp_path, {"name": "x", "checkpoints": ["a.json"], "pre_pruned": None, "rounds": [0.8, 0.5]})
    cfg = load_config(s, SearchConfig, ["pre_pruned.copies=2", "rounds=null"])
    assert cfg.pre_pruned is not None and cfg.pre_pruned.copies == 2
    with pytest.raises(RLPruneError, match=r"'rounds' is a list here, not a section; .*--set 'rounds=\{\.\.\.\}'"):
        load_config(s, SearchConfig, ["rounds.finetune_epochs=2"])


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"name": "x", "train": {"epoch": 3}}, "unknown key 'train.epoch' \\(did you mean 'epochs'\\?\\)"),
        ({"nmae": "x"}, "unknown key 'nmae'"),
        ({"train": {}}, "missing required key 'name'"),
        ({"name": "x", "train": {"schedule": "step"}}, "train.schedule"),
        ({"name": "x", "train": {"epochs": 2, "warmup_epochs": 5}}, "warmup_epochs"),
        ({"name": "x", "train": {"epochs": 4, "swa": {"epochs": 4}}}, r"warmup_epochs \+ swa.epochs \(5\)"),
        ({"name": "x", "train": {"lr": 0.1, "swa": {"epochs": 1, "lr": 0.2}}}, "swa.lr"),
        ({"name": "x", "train": {"distill": {"teacher": []}}}, "train.distill.teacher"),
        ({"name": "x", "train": {"distill": {"teacher": ["zoo/a", ""]}}}, "non-empty list"),
    ],
)
def test_config_errors_are_one_line(tmp_path: Path, data: dict, match: str) -> None:
    with pytest.raises(RLPruneError, match=match) as info:
        load_config(_write(tmp_path, data), PretrainConfig)
    assert "\n" not in str(info.value) and "c.yaml" in str(info.value)


@pytest.mark.parametrize(
    ("finetune", "match"),
    [
        ({"epochs": 2, "swa_epochs": 3}, r"finetune: swa_epochs \(3\) exceeds epochs \(2\)"),
        ({"lr": 0.02, "swa_epochs": 1, "swa_lr": 0.05}, r"swa_lr \(0.05\) exceeds lr"),
    ],
)
def test_finetune_swa_errors_are_one_line(tmp_path: Path, finetune: dict, match: str) -> None:
    with pytest.raises(RLPruneError, match=match) as info:
        load_config(_write(tmp_path, {"name": "x", "checkpoint": "c.json", "finetune": finetune}), SearchConfig)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("data", "overrides", "match"),
    [
        ({}, ["seed=-1"], "seed"),  # NumPy, torch and SB3 seeds are 0 <= seed < 2**32
        ({}, ["seed=5000000000"], "seed"),
        ({}, ["proxy.seed=-1"], "proxy.seed"),
        ({}, ["device=gpu"], "device"),
        ({"name": "../elsewhere"}, [], "name"),  # a run writes inside output_dir, in one folder
        ({"name": "."}, [], "name"),
        ({"name": "x" * 300}, [], "name"),
        ({}, ["agent.hyperparams.ent_coef=.nan"], "agent.hyperparams.ent_coef"),
        (
            {"rounds": {"targets": [0.8, 0.5]}, "finetune": {"epochs": 4, "swa_epochs": 3}, "env": {"target": 0.5}},
            ["rounds.finetune_epochs=2"],
            r"rounds.finetune_epochs \(2\) is below finetune.swa_epochs \(3\)",
        ),
        ({"rounds": [0.8, 0.5], "env": {"target": 0.5}, "prune": {"heads": {"blocks.*.attn": 4}}}, [], "rounds"),
    ],
)
def test_search_settings_that_would_fail_later_are_refused_up_front(
    tmp_path: Path, data: dict, overrides: list[str], match: str
) -> None:
    """A value no run can use is refused when the config is read, naming the key, not deep inside a run."""
    p = _write(tmp_path, {"name": "x", "checkpoint": "c.json", **data})
    with pytest.raises(RLPruneError, match=match) as info:
        load_config(p, SearchConfig, overrides)
    assert "\n" not in str(info.value)


def test_a_resolved_config_reads_back_as_written(tmp_path: Path) -> None:
    """``config.yaml`` quotes text the loader would read as a number (a run named ``1e3``)."""
    (tmp_path / "c.yaml").write_text("name: '1e3'\ncheckpoint: c.json\n")
    cfg = load_config(tmp_path / "c.yaml", SearchConfig)
    assert load_config(write_resolved(cfg, tmp_path), SearchConfig) == cfg


def test_numbers_in_exponent_form_are_numbers(tmp_path: Path) -> None:
    """YAML 1.1 reads ``3e-4`` as text; a learning rate written that way reaches the agent as a number."""
    p = _write(tmp_path, {"name": "x", "checkpoint": "c.json"})
    p.write_text(p.read_text() + "agent:\n  hyperparams:\n    learning_rate: 3e-4\n    clip_range: 1.0e-1\n")
    cfg = load_config(p, SearchConfig, ["agent.hyperparams.ent_coef=1e-3", "data_root=1e3x"])
    assert cfg.agent.hyperparams == {"learning_rate": 3e-4, "clip_range": 0.1, "ent_coef": 1e-3}
    assert cfg.data_root == "1e3x"  # text stays text


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(RLPruneError, match="config file not found"):
        load_config(tmp_path / "none.yaml", PretrainConfig)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(RLPruneError, match="not valid YAML"):
        load_config(bad, PretrainConfig)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, {"name": "x"}), PretrainConfig, ["seed=7"])
    path = write_resolved(cfg, tmp_path / "run")
    assert load_config(path, PretrainConfig) == cfg


def test_round_to_auto_resolves_to_the_cpu_vector_width(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from rlprune.cost.latency import simd_channels

    base = {"name": "x", "checkpoint": "c.json"}
    for capability, lanes in (("AVX512", 16), ("AVX2", 8), ("DEFAULT", 4), ("NO AVX", 4)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert simd_channels() == lanes
        cfg = load_config(_write(tmp_path, {**base, "env": {"round_to": "auto"}}), SearchConfig)
        assert cfg.env.round_to == lanes  # the run records the number it pruned with, not "auto"
        assert load_config(write_resolved(cfg, tmp_path / capability.replace(" ", "_")), SearchConfig) == cfg
    for bad in (0, "fast", 2.5, True):
        with pytest.raises(
            RLPruneError, match="env.round_to: expected a whole number of channels >= 1 or 'auto'"
        ) as info:
            load_config(_write(tmp_path, {**base, "env": {"round_to": bad}}), SearchConfig)
        assert "\n" not in str(info.value)
    with pytest.raises(RLPruneError, match="round_to"):  # rounding is for channels: refused for weight sparsity
        load_config(
            _write(tmp_path, {**base, "env": {"round_to": "auto", "granularity": "unstructured", "budget": "params"}}),
            SearchConfig,
        )
