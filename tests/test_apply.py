from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from rlprune.cli import main
from rlprune.config import FinetuneConfig, validate
from rlprune.cost.macs import predict_costs
from rlprune.errors import RLPruneError
from rlprune.io.checkpoint import load_checkpoint
from rlprune.jobs.apply import load_dense
from rlprune.pruning import Plan


def _pretrain(tmp: Path, data: Path, name: str, model: str) -> Path:
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "output_dir": str(tmp / "runs"),
                "data": {"dataset": "imagefolder", "root": str(data), "val_size": 12, "batch_size": 16},
                "model": {"name": model, "kwargs": {"width": 8}},
                "train": {"epochs": 1, "warmup_epochs": 0},
            }
        )
    )
    assert main(["pretrain", str(cfg), "--quiet"]) == 0
    return tmp / "runs" / name / "model.json"


def _search_config(tmp: Path, name: str, checkpoint: Path, **sections: object) -> Path:
    """A search config for ``checkpoint`` with tiny proxy settings, written to ``tmp/<name>.yaml``."""
    cfg = tmp / f"{name}.yaml"
    body = {"name": name, "checkpoint": str(checkpoint), "output_dir": str(tmp / "runs")}
    cfg.write_text(yaml.safe_dump({**body, "proxy": {"recal_batches": 2, "recal_batch_size": 8}, **sections}))
    return cfg


@pytest.fixture(scope="module")
def trained(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("apply")
    ck20 = _pretrain(tmp, image_folder, "r20", "resnet20")
    ck32 = _pretrain(tmp, image_folder, "r32", "resnet32")
    search = _search_config(
        tmp, "policy", ck20, agent={"episodes": 4, "hyperparams": {"n_steps": 24, "batch_size": 12}}
    )
    assert main(["train", str(search), "--quiet"]) == 0
    return {"tmp": tmp, "ck20": ck20, "ck32": ck32, "policy": tmp / "runs" / "policy"}


def test_apply_to_a_deeper_model_end_to_end(trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = trained["tmp"] / "applied32"
    capsys.readouterr()
    code = main(
        [
            "apply",
            "--policy",
            str(trained["policy"]),
            "--checkpoint",
            str(trained["ck32"]),
            "--target-macs",
            "0.5",
            "--out",
            str(out),
            "--quiet",
            "--batch-size",
            "16",
        ]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    # the MACs the plan predicts are exactly those counted on the real pruned model, and within the env's budget
    # window [target - tolerance, target] (tolerance 0.01, the EnvConfig default the policy was trained with)
    _, _, structure = load_dense(str(trained["ck32"]))
    plan = Plan.load(out / "plan.json")
    assert predict_costs(structure, plan.channels)[0] == report["pruned"]["macs"]
    ratio = report["pruned"]["macs"] / report["dense"]["macs"]
    assert 0.5 - 0.01 <= ratio <= 0.5 and summary["macs_ratio"] == round(ratio, 4)
    for name in (
        "model.safetensors",
        "model.json",
        "plan.json",
        "model.onnx",
        "report.json",
        "report.md",
        "plan_profile.png",
        "finetune.png",
    ):
        assert (out / name).is_file(), name
    assert report["pruned"]["params"] < report["dense"]["params"]
    assert report["source"]["outside_training"]["of"] == len(structure.units)  # checked against what it was trained on
    assert set(report["latency_ms_cpu"]["pruned"]) == {"1", "64"}
    model, meta = load_checkpoint(out / "model.json")
    assert meta["plan"]["kept"] and meta["model"] == "resnet32"
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "model.json")]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(meta["test_accuracy"], abs=0.01)
    x = torch.randn(3, 3, 32, 32)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert np.abs(session.run(None, {"input": x.numpy()})[0] - model.eval()(x).numpy()).max() < 1e-4


def test_apply_samples_plans_and_keeps_the_best_by_proxy(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from rlprune.jobs.apply import policy_plans

    dense, _, structure = load_dense(str(trained["ck32"]))
    draw = {
        seed: policy_plans(str(trained["policy"]), dense, structure, target=0.5, samples=3, seed=seed)
        for seed in (0, 1)
    }
    assert [p.to_dict() for p in draw[0]] == [
        p.to_dict() for p in policy_plans(str(trained["policy"]), dense, structure, target=0.5, samples=3, seed=0)
    ]  # seeded
    assert draw[0][0].to_dict() == draw[1][0].to_dict()  # the first is the deterministic rollout, whatever the seed
    assert len({json.dumps(p.to_dict(), sort_keys=True) for p in draw[0] + draw[1]}) > 1  # draws differ
    out = trained["tmp"] / "applied32_samples"
    args = ["--checkpoint", str(trained["ck32"]), "--target-macs", "0.5", "--samples", "3", "--out", str(out)]
    assert main(["apply", "--policy", str(trained["policy"]), *args, "--quiet", "--batch-size", "16"]) == 0
    source = json.loads((out / "report.json").read_text())["source"]
    scores = [c["proxy_val_accuracy"] for c in source["candidates"]]
    assert len(scores) == 4 and source["samples"] == 3
    chosen = 0 if source["chosen"] == "deterministic" else source["chosen"]
    assert scores[chosen] == max(scores)
    assert json.loads((out / "plan.json").read_text())["channels"] == draw[0][chosen].to_dict()["channels"]
    capsys.readouterr()
    assert main(["apply", "--policy", str(trained["policy"]), *args[:-1], str(out) + "x", "--samples", "-1"]) == 2
    assert "--samples" in capsys.readouterr().err


class SpreadScorer:
    """Scores a plan by how evenly (``sign`` -1) or unevenly (+1) it spreads its ratios: which candidate wins is
    then known in advance, so the choice itself is what is tested."""

    def __init__(self, structure: object, sign: float, scale: float = 1.0, importance: str = "l1") -> None:
        self.structure, self.importance, self.sign, self.scale = structure, importance, sign, scale

    def __call__(self, plan: Plan) -> object:
        from rlprune.evaluation.scorer import Score

        assert plan.importance == self.importance  # the plans carry the criterion they are scored with
        return Score(accuracy=0.84 + self.scale * self.sign * float(np.std(list(plan.ratios.values()))))


def test_uniform_guard_keeps_the_uniform_plan_only_when_it_scores_best(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from rlprune.cost.budget import macs_ratio, uniform_plan
    from rlprune.jobs.apply import apply_policy, example_input, policy_plans

    dense, meta, structure = load_dense(str(trained["ck32"]))
    rollout = policy_plans(str(trained["policy"]), dense, structure, target=0.5)[0]
    assert np.std(list(rollout.ratios.values())) > 0  # the policy's plan is not uniform (else nothing is tested)
    # a metric on a 0-1 scale (scale 0.01: the two candidates differ in the third decimal) is compared as it is
    for sign, chosen, scale in ((-1.0, "uniform", 1.0), (1.0, "deterministic", 1.0), (-1.0, "uniform", 0.01)):
        plan, record = apply_policy(
            str(trained["policy"]),
            dense,
            example_input(meta),
            target=0.5,
            scorer=SpreadScorer(structure, sign, scale, importance="l2"),
            uniform_guard=True,
        )
        assert record["chosen"] == chosen and len(record["candidates"]) == 2 and record["uniform_guard"]
        assert plan.importance == "l2"
        assert 0.49 <= macs_ratio(structure, plan) <= 0.5
        if chosen == "uniform":  # the uniform plan at the same budget, as the budget's solver makes it
            assert plan.channels == uniform_plan(structure, 0.5).channels
        else:
            assert plan.channels == rollout.channels
    with pytest.raises(RLPruneError, match="uniform_guard: choosing among candidate plans needs a scorer"):
        apply_policy(str(trained["policy"]), dense, example_input(meta), target=0.5, uniform_guard=True)
    out = trained["tmp"] / "applied32_guard"  # from the command line: the proxy on the validation split decides
    args = ["--checkpoint", str(trained["ck32"]), "--target-macs", "0.5", "--uniform-guard", "--out", str(out)]
    args += ["--adapt", "2"]  # and two episodes of the policy's training continued on this model
    assert main(["apply", "--policy", str(trained["policy"]), *args, "--quiet", "--batch-size", "16"]) == 0
    source = json.loads((out / "report.json").read_text())["source"]
    scores = [c["proxy_val_accuracy"] for c in source["candidates"]]
    labels = ["deterministic", "adapted", "uniform"]
    assert len(scores) == 3 and source["chosen"] == labels[max(range(3), key=lambda i: (scores[i], -i))]
    adapted = trained["tmp"] / "applied32_guard-adapt"
    assert source["adapt"]["run_dir"] == str(adapted) and source["adapt"]["episodes"] == 2
    assert len((adapted / "episodes.jsonl").read_text().splitlines()) == 2 and (adapted / "policy.json").is_file()


def test_finetune_a_saved_plan(trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = trained["tmp"] / "ft20"
    plan = trained["policy"] / "best_plan.json"
    assert (
        main(
            [
                "finetune",
                "--plan",
                str(plan),
                "--checkpoint",
                str(trained["ck20"]),
                "--out",
                str(out),
                "--no-distill",
                "--quiet",
                "--batch-size",
                "16",
                "--finetune-epochs",
                "2",
                "--swa-epochs",
                "1",
                "--quantize",
                "int8",
            ]
        )
        == 0
    )
    report_md = (out / "report.md").read_text()
    assert report_md.startswith("# Pruning report — resnet20")
    assert "the last 1 averaged (SWA, lr 0.01)" in report_md
    report = json.loads((out / "report.json").read_text())
    finetune = report["finetune"]
    assert finetune["swa"] == {"epochs": 1, "lr": 0.01}
    assert finetune["history"][-1]["swa_models"] == 1 and "sgd_val_accuracy" in finetune["history"][-1]
    # per-class numbers of both models on the test split, the chart beside the report
    classes = report["classes"]
    assert set(classes) >= {"dense", "pruned"} and (out / "classes.png").stat().st_size > 1000
    assert len(classes["pruned"]["per_class"]) == 3 and "worst_class_drop" in classes["pruned"]
    # int8: a smaller ONNX file, scored on val and test, timed in ONNX Runtime
    int8 = report["int8"]
    assert int8["bytes"]["int8"] < int8["bytes"]["fp32"] and (out / "model.int8.onnx").is_file()
    assert {"val", "test", "latency_ms_ort"} <= set(int8["int8"]) and "## int8" in report_md


def test_hand_written_plan_and_a_killed_finetune_resumes(
    trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    import rlprune.jobs.finetune

    tmp = trained["tmp"]
    plan = tmp / "hand.json"
    plan.write_text(json.dumps({"ratios": {"layers.0.conv1": 0.5, "layers.3.conv1": 0.25}}))
    out = tmp / "hand"
    cmd = ["finetune", "--plan", str(plan), "--checkpoint", str(trained["ck20"]), "--out", str(out), "--quiet"]
    cmd += ["--batch-size", "16", "--finetune-epochs", "2"]

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # as if the process was stopped after fine-tuning, before the export

    monkeypatch.setattr(rlprune.jobs.finetune, "export_onnx", killed)
    assert main(cmd) == 130  # the CLI turns Ctrl-C into exit status 130
    partial = tmp / ".hand.partial"
    assert not out.exists() and (partial / "finetune" / "state.pt").is_file()
    monkeypatch.undo()
    # a handler on the module's own logger: caplog sees nothing once setup_logging() (run by an earlier CLI call
    # in the same process) has stopped the "rlprune" logger from propagating to the root
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("rlprune.io.rundir")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert main(cmd) == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any("resuming the fine-tune" in m for m in messages), messages
    report = json.loads((out / "report.json").read_text())
    assert len(report["finetune"]["history"]) == 2 and not partial.exists()
    assert not (out / "finetune" / "state.pt").exists() and not (out / "request.json").exists()
    assert (out / "finetune" / "tb").is_dir()  # the TensorBoard logs the CLI points to are kept
    saved = json.loads((out / "plan.json").read_text())
    assert saved["channels"]["layers.0.conv1"] == 4 and saved["ratios"]["layers.6.conv1"] == 0.0


def _error(capsys: pytest.CaptureFixture[str], code: int, needle: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and needle in err, err


def test_apply_errors_leave_nothing_behind(trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    tmp = trained["tmp"]
    out = tmp / "bad"
    base = [
        "apply",
        "--policy",
        str(trained["policy"]),
        "--checkpoint",
        str(trained["ck20"]),
        "--target-macs",
        "0.5",
        "--out",
        str(out),
        "--quiet",
    ]
    # A policy with another feature-spec version.
    meta = json.loads((trained["policy"] / "policy.json").read_text())
    odd = tmp / "odd"
    odd.mkdir(exist_ok=True)
    (odd / "policy.safetensors").write_bytes((trained["policy"] / "policy.safetensors").read_bytes())
    (odd / "policy.json").write_text(json.dumps({**meta, "feature_version": 99}))
    capsys.readouterr()
    _error(capsys, main([*base[:2], str(odd), *base[3:]]), "feature spec v99")
    # An import path that does not resolve.
    _error(capsys, main([*base, "--model", "no_such_pkg.nets:make"]), "cannot import module 'no_such_pkg.nets'")
    # A checkpoint whose shapes do not fit the model.
    _error(capsys, main([*base, "--model", "resnet56"]), "weights do not fit the model")
    # A plan for another model.
    fin = [
        "finetune",
        "--plan",
        str(trained["policy"] / "best_plan.json"),
        "--checkpoint",
        str(trained["ck32"]),
        "--out",
        str(out),
        "--quiet",
    ]
    _error(capsys, main(fin), "made for another model")
    _error(capsys, main([*fin, "--swa-epochs", "2"]), "--swa-epochs: expected 0 to 1 (--finetune-epochs), got 2")
    ck20_fin = [*fin[:4], str(trained["ck20"]), *fin[5:]]
    swa_lr = main([*ck20_fin, "--swa-epochs", "1", "--swa-lr", "0.5"])
    _error(capsys, swa_lr, "--swa-lr: expected a value in (0, --lr = 0.02], got 0.5")
    _error(capsys, main([*base[:5], "--target-macs", "1.5", *base[7:]]), "--target-macs: expected a ratio")
    assert not out.exists()
    assert not list(tmp.glob(".bad*"))


def test_model_without_prunable_units(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rlprune.io.checkpoint import save_checkpoint

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))
    save_checkpoint(tmp_path / "lin", model, {"model": "netlib:flat_linear", "model_kwargs": {}})
    code = main(
        [
            "apply",
            "--policy",
            "p",
            "--checkpoint",
            str(tmp_path / "lin.json"),
            "--target-macs",
            "0.5",
            "--out",
            str(tmp_path / "o"),
            "--quiet",
            "--trust-model-code",  # the sidecar names model code: imported only when trusted (rlprune.io.trust)
        ]
    )
    _error(capsys, code, "no prunable units")


def test_run_is_the_main_job_in_one_command(trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    tmp = trained["tmp"]
    cfg = _search_config(
        tmp,
        "main",
        trained["ck20"],
        agent={"episodes": 3, "hyperparams": {"n_steps": 24, "batch_size": 12}},
        finetune={"epochs": 1, "batch_size": 16},
        latency={"calibration_plans": 2},
    )
    capsys.readouterr()
    assert main(["run", str(cfg), "--quiet"]) == 0
    out = capsys.readouterr().out
    first = json.loads(out.splitlines()[0])
    assert Path(first["report"]).is_file() and "tensorboard --logdir" in first["tensorboard"]
    assert "# Pruning report" in out
    # no reward in the config: the main job's search was latency-aware, on a batch-64 lookup table
    run = tmp / "runs" / "main"
    assert yaml.safe_load((run / "config.yaml").read_text())["env"]["reward"] == "accuracy_latency"
    assert json.loads((run / "latency_table.json").read_text())["batch_size"] == 64
    assert main(["run", str(cfg), "--quiet"]) == 2  # a finished run is not overwritten


def test_latency_budget_search_on_a_real_checkpoint(trained: dict[str, Path]) -> None:
    tmp = trained["tmp"]
    # a batch large enough (16 images) that computing, not per-call overhead, decides the time, and a cut (0.8 of
    # the latency) well above the floor of this tiny net (~0.64 with every unit cut by 0.9): the pruned model must
    # then be measurably faster, not just predicted to be
    cfg = _search_config(
        tmp,
        "lat",
        trained["ck20"],
        env={"budget": "latency", "target": 0.8, "max_ratio": 0.9},
        proxy={"recal_batches": 2, "recal_batch_size": 8, "finetune_steps": 2},
        latency={"batch_size": 16, "threads": 1},
        agent={"episodes": 3},
    )
    assert main(["search", str(cfg), "--searcher", "random", "--quiet"]) == 0
    run = tmp / "runs" / "lat-random"
    summary = json.loads((run / "summary.json").read_text())
    calibration = json.loads((run / "latency_table.json").read_text())["calibration"]
    assert calibration["plans"] == 8  # the table was refitted on plans at the budget, timed for real
    # the refit predicts those plans' measured ratio on average (the line runs through the dense model as well)
    assert abs(calibration["predicted_ratio_mean_after"] - calibration["measured_ratio_mean"]) < 0.05
    best = summary["best"]
    assert best["latency_ratio"] <= 0.8 + 1e-6  # the lookup table's prediction meets the budget
    # the real latency of the best plan (interleaved medians against the dense model) is lower than the dense one's
    assert 0 < best["measured_latency_ratio"] < 1
    assert summary["wall_seconds"] > 0 and summary["episodes"] == 3


def test_sampling_plans_needs_a_stochastic_policy() -> None:
    from rlprune.agents.policy_io import Policy
    from rlprune.errors import RLPruneError

    meta = {"format": "rlprune-policy/1", "algorithm": "ddpg", "feature_version": 2}
    deterministic = Policy(torch.nn.Linear(18, 1), meta)  # no action distribution
    with pytest.raises(RLPruneError, match="ddpg policy has no action distribution"):
        deterministic.sampler(0)


def test_finetune_recipe_is_checked_before_any_work(tmp_path: Path) -> None:
    # the recipe is a validated config: a bad one never reaches the model, the data or the output folder
    for fields, match in (
        ({"epochs": 2, "swa_epochs": 3}, r"fine-tune: .*swa_epochs \(3\) exceeds epochs \(2\)"),
        ({"lr": 0.02, "swa_epochs": 1, "swa_lr": 0.05}, r"fine-tune: .*swa_lr \(0.05\) exceeds lr"),
    ):
        with pytest.raises(RLPruneError, match=match):
            validate(FinetuneConfig, fields, "fine-tune")
    recipe = FinetuneConfig(epochs=3, lr=0.04, swa_epochs=1, distill=False).train_config()
    assert (recipe.swa.epochs, recipe.swa.lr, recipe.distill.weight, recipe.warmup_epochs) == (1, 0.02, 0.0, 0)
    assert not list(tmp_path.iterdir())


def test_a_policy_flags_units_unlike_any_it_was_trained_on(
    trained: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rlprune as rp
    from rlprune.agents.policy_io import load_policy, policy_paths
    from rlprune.envs.features import feature_spec

    policy = load_policy(trained["policy"])
    envelope = policy.meta["feature_envelope"]  # recorded at training: the range of each static feature it saw
    assert envelope["names"] == list(feature_spec(policy.meta["feature_version"]).static_names)
    assert all(0 <= lo <= hi <= 1 for lo, hi in zip(envelope["low"], envelope["high"], strict=True))
    x = torch.zeros(1, 3, 32, 32)
    resnet, _, _ = load_dense(str(trained["ck20"]))
    # caplog listens on the root logger, which an earlier CLI call's setup_logging() cut the "rlprune" logger off from
    monkeypatch.setattr(logging.getLogger("rlprune"), "propagate", True)
    with caplog.at_level("WARNING", logger="rlprune.jobs.apply"):
        _, record = rp.apply_policy(policy, resnet, x, target=0.5)
        assert not caplog.records  # the model it was trained on: nothing to flag
        assert record["outside_training"] == {"units": 0, "of": 12, "indices": [], "features": {}}
        # a policy saved before policies recorded their range: no check, no warning
        _, record = rp.apply_policy("benchmarks/results/policies/generalist_macs", resnet, x, target=0.5)
        assert record["outside_training"] is None and not caplog.records
        _, record = rp.apply_policy(policy, rp.build_model("mobilenetv2", width_mult=0.5).eval(), x, target=0.5)
    outside = record["outside_training"]
    # depthwise layers: a kind it never saw, flagged by name, and said in one warning line
    assert outside["units"] == len(outside["indices"]) > 0 and outside["features"]["is_depthwise"] > 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("outside what it saw in training" in m and "is_depthwise" in m for m in messages), messages
    # a policy file whose envelope is malformed or names other features is refused when read, naming the file
    weights, meta_path = policy_paths(trained["policy"])
    bad = tmp_path / "bad"
    bad.mkdir()
    meta = json.loads(meta_path.read_text())
    (bad / "policy.safetensors").write_bytes(weights.read_bytes())
    n = len(envelope["names"])
    for broken in (
        {**envelope, "low": [1.0] * n, "high": [0.0] * n},  # low above high
        {**envelope, "names": envelope["names"][::-1]},  # another feature order
        {**envelope, "low": envelope["low"][:-1]},  # one value short
        {**envelope, "names": [1] * n},  # not names
        {"names": ["f"] * 65, "low": [0.0] * 65, "high": [1.0] * 65},  # more features than any spec
        [envelope["low"], envelope["high"]],  # not an object
    ):
        (bad / "policy.json").write_text(json.dumps({**meta, "feature_envelope": broken}))
        with pytest.raises(RLPruneError, match=r"policy\.json.*feature_envelope"):
            load_policy(bad)


def test_a_scorer_on_another_device_leaves_your_model_where_it_is() -> None:
    """A scorer or a latency table needs the model on its own device; the caller's model is not moved (later steps
    trace it on the CPU), a copy is."""
    from rlprune.seeding import on_device

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert on_device(model, torch.device("cpu")) is model  # already there: no copy
    moved = on_device(model, torch.device("meta"))
    assert moved is not model and next(moved.parameters()).device.type == "meta"
    assert all(t.device.type == "cpu" for t in (*model.parameters(), *model.buffers()))
