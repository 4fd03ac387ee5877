from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlprune.config import TrainConfig
from rlprune.data import load_splits
from rlprune.errors import RLPruneError
from rlprune.io.checkpoint import load_state, save_state
from rlprune.models import build_model
from rlprune.training.engine import fit
from rlprune.training.losses import distillation_loss
from rlprune.training.schedule import lr_multiplier
from rlprune.training.swa import WeightAverage

META = {"model": "resnet20", "model_kwargs": {"num_classes": 3, "width": 4}}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("resnet20", num_classes=3, width=4)


def _recipe(**kw: object) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "lr": 0.05, "warmup_epochs": 0, "amp": "off", **kw})


def test_training_reduces_loss(image_folder: Path, tmp_path: Path) -> None:
    splits = load_splits("imagefolder", image_folder, val_size=6)
    result = fit(_model(), splits, _recipe(epochs=4), tmp_path, meta=META, batch_size=8, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert (tmp_path / "last.safetensors").is_file() and (tmp_path / "tb").is_dir()
    assert len(result.history) == 4 and "val_accuracy" in result.history[-1]


def test_resume_continues_from_saved_epoch(image_folder: Path, tmp_path: Path) -> None:
    splits = load_splits("imagefolder", image_folder, val_size=6)
    straight = _model()
    fit(straight, splits, _recipe(), tmp_path / "a", meta=META, batch_size=8, progress=False)

    class Crash(Exception):
        pass

    def crash_after_two(epoch: int, _: dict) -> None:
        if epoch == 2:
            raise Crash

    with pytest.raises(Crash):
        fit(
            _model(),
            splits,
            _recipe(),
            tmp_path / "b",
            meta=META,
            batch_size=8,
            progress=False,
            on_epoch_end=crash_after_two,
        )
    epochs_run: list[int] = []
    resumed = _model()
    result = fit(
        resumed,
        splits,
        _recipe(),
        tmp_path / "b",
        meta=META,
        batch_size=8,
        progress=False,
        on_epoch_end=lambda e, _: epochs_run.append(e),
    )
    assert result.resumed_from_epoch == 2 and epochs_run == [3]
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name
    # a saved state is never continued under another recipe (e.g. more epochs would jump the LR schedule)
    with pytest.raises(RLPruneError, match=r"another recipe, model or data \(recipe.epochs: 3 -> 5\)"):
        fit(_model(), splits, _recipe(epochs=5), tmp_path / "b", meta=META, batch_size=8, progress=False)
    # nor on another model or other data: another width would not load; another split would validate on trained images
    wider = {**META, "model_kwargs": {"num_classes": 3, "width": 8}}
    with pytest.raises(RLPruneError, match=r"model.model_kwargs.width: 4 -> 8"):
        fit(_model(), splits, _recipe(), tmp_path / "b", meta=wider, batch_size=8, progress=False)
    fewer = load_splits("imagefolder", image_folder, val_size=4)
    with pytest.raises(RLPruneError, match=r"data.train_images"):
        fit(_model(), fewer, _recipe(), tmp_path / "b", meta=META, batch_size=8, progress=False)


def test_distillation_term() -> None:
    torch.manual_seed(0)
    s, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    ce = distillation_loss(s, y)
    assert torch.isclose(distillation_loss(s, y, s.clone(), weight=0.5), 0.5 * ce)  # KL(s‖s) = 0
    assert distillation_loss(s, y, torch.randn(8, 3), weight=0.5) > 0.5 * ce


def test_schedules() -> None:
    cos = lr_multiplier("cosine", 100, 10)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0) and cos(99) < 0.01
    one = lr_multiplier("onecycle", 100, 10)
    assert one(0) == pytest.approx(1 / 25 + (1 - 1 / 25) / 10) and one(100) == pytest.approx(1e-4)
    held = lr_multiplier("cosine", 100, 10, floor=0.2)  # SWA: decay to the floor, then hold it
    assert held(9) == pytest.approx(1.0) and held(55) == pytest.approx(0.6) and held(100) == held(250) == 0.2
    assert lr_multiplier("cosine", 10, 10, floor=0.2)(10) == 0.2  # no decay left: straight to the floor


def test_weight_average_is_the_mean_of_the_iterates() -> None:
    model = torch.nn.Linear(3, 2)
    snapshots = []
    average = WeightAverage()
    for i in range(3):
        with torch.no_grad():
            model.weight.fill_(float(i))
            model.bias.fill_(2.0 * i)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        average.update(model)
    restored = WeightAverage()
    restored.load_state_dict(average.state_dict())
    restored.copy_to(model)
    assert torch.allclose(model.weight, torch.ones(2, 3)) and torch.allclose(model.bias, torch.full((2,), 2.0))
    with pytest.raises(ValueError, match="no weights"):
        WeightAverage().copy_to(model)


def test_swa_averages_the_last_epochs_and_resumes(image_folder: Path, tmp_path: Path) -> None:
    splits = load_splits("imagefolder", image_folder, val_size=6)
    recipe = _recipe(epochs=4, swa={"epochs": 2, "lr": 0.02})
    straight = _model()
    result = fit(straight, splits, recipe, tmp_path / "a", meta=META, batch_size=8, progress=False)
    last = result.history[-1]
    assert [h.get("swa_models") for h in result.history] == [None, None, 1, 2]
    assert {"sgd_val_accuracy", "val_accuracy"} <= set(last) and last["lr"] == pytest.approx(0.02)
    assert result.history[1]["lr"] == pytest.approx(0.02)  # the decay ends where averaging starts

    class Crash(Exception):
        pass

    def crash(epoch: int, _: dict) -> None:
        if epoch == 3:  # one model already folded into the average: it must survive the restart
            raise Crash

    with pytest.raises(Crash):
        fit(_model(), splits, recipe, tmp_path / "b", meta=META, batch_size=8, progress=False, on_epoch_end=crash)
    resumed = _model()
    fit(resumed, splits, recipe, tmp_path / "b", meta=META, batch_size=8, progress=False)
    finished = _model()  # a finished run, "resumed", hands back the average, not the last iterate
    fit(finished, splits, recipe, tmp_path / "a", meta=META, batch_size=8, progress=False)
    for other in (resumed, finished):
        for (name, a), b in zip(straight.state_dict().items(), other.state_dict().values(), strict=True):
            assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_resume_refuses_a_state_without_weights(image_folder: Path, tmp_path: Path) -> None:
    """A state without its weights cannot be paired safely with ``last``: refused in one line."""
    splits = load_splits("imagefolder", image_folder, val_size=6)
    fit(_model(), splits, _recipe(epochs=2), tmp_path, meta=META, batch_size=8, progress=False)
    state = load_state(tmp_path / "state.pt")
    del state["model"]
    state["epoch"] = 1
    save_state(tmp_path / "state.pt", state)
    with pytest.raises(RLPruneError, match="state.pt: not a complete resume state \\(no 'model'\\)") as err:
        fit(_model(), splits, _recipe(epochs=2), tmp_path, meta=META, batch_size=8, progress=False)
    assert err.value.fix == "restart"


def test_distillation_leaves_the_teacher_prunable(image_folder: Path, tmp_path: Path) -> None:
    """A dense model used as the teacher of one fine-tune must still be traceable for the next one (regression: the
    engine froze its weights, torch-pruning then found no unit, and a second plan on the same model failed)."""
    from rlprune.pruning.analysis import analyze

    splits = load_splits("imagefolder", image_folder, val_size=6)
    teacher = _model()
    units = len(analyze(teacher, torch.randn(1, 3, 32, 32)).units)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    recipe = _recipe(epochs=1, distill={"weight": 0.5, "temperature": 4.0})
    fit(_model(), splits, recipe, tmp_path, meta=META, batch_size=8, progress=False, teacher=teacher)
    assert all(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert len(analyze(teacher, torch.randn(1, 3, 32, 32)).units) == units


def test_ensemble_teacher_averages_logits_and_checks_classes(tmp_path: Path) -> None:
    from rlprune.io.checkpoint import save_checkpoint
    from rlprune.training.teachers import LogitEnsemble, load_teacher

    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    paths = []
    for i in range(2):
        torch.manual_seed(i)
        meta = {**META, "classes": ["a", "b", "c"], "mean": mean, "std": std}
        paths.append(str(save_checkpoint(tmp_path / f"t{i}", build_model("resnet20", num_classes=3, width=4), meta)))
    x = torch.randn(2, 3, 32, 32)
    single = load_teacher(paths[0], ["a", "b", "c"], mean, std).eval()
    pair = load_teacher(paths, ["a", "b", "c"], mean, std).eval()
    assert isinstance(pair, LogitEnsemble) and not isinstance(single, LogitEnsemble)
    with torch.no_grad():
        other = load_teacher(paths[1], ["a", "b", "c"], mean, std).eval()(x)
        assert torch.allclose(pair(x), (single(x) + other) / 2, atol=1e-6)
    with pytest.raises(RLPruneError, match=r"t1\.json predicts classes \['a', 'b', 'c'\], not \['a', 'c', 'b'\]"):
        load_teacher(paths[1], ["a", "c", "b"], mean, std)
    with pytest.raises(RLPruneError, match="expects input std"):
        load_teacher(paths, ["a", "b", "c"], mean, [0.2, 0.2, 0.2])
