"""The README's Python example runs as written (on the real CIFAR-10 copy), and the public API is what it says."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import rlprune

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_public_api_is_complete_and_documented() -> None:
    import rlprune as rp

    assert rp.__all__ == sorted(rp.__all__) and set(rp.__all__) == set(rlprune._EXPORTS)
    for name in rp.__all__:
        obj = getattr(rp, name)
        assert (obj.__doc__ or "").strip(), f"rlprune.{name} has no docstring"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = rp.nope
    # docs/api.md lists every public name once, as docs/make_api.py renders it from the docstrings today
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_api", ROOT / "docs" / "make_api.py")
    assert spec is not None and spec.loader is not None
    make_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_api)
    grouped = [name for names in make_api.GROUPS.values() for name in names]
    assert sorted(grouped) == rp.__all__, "docs/make_api.py: GROUPS must hold every public name once"
    assert (ROOT / "docs" / "api.md").read_text() == make_api.render(), "docs/api.md is stale: python docs/make_api.py"


@pytest.mark.skipif(not os.environ.get("RLPRUNE_DATA"), reason="needs $RLPRUNE_DATA (the CIFAR-10 copy)")
def test_readme_python_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = _python_blocks()
    assert len(blocks) == 1, "the README has one Python example"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RLPRUNE_CACHE", raising=False)  # decode the images once per machine, as a user would
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    result = namespace["result"]
    assert (tmp_path / "runs" / "my_cnn" / "best_plan.json").is_file()
    assert (tmp_path / "runs" / "my_cnn" / "pruned.onnx").is_file()
    assert len(result.records) == 24 and result.policy is not None  # type: ignore[attr-defined]
    assert 0.49 <= result.best["macs_ratio"] <= 0.5  # type: ignore[attr-defined]
    pruned = namespace["pruned"]
    model = namespace["model"]
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())  # type: ignore[attr-defined]
    out = capsys.readouterr().out.strip().splitlines()
    assert 0.49 <= float(out[-1]) <= 0.5  # the policy met its budget on the wider model


def test_main_job_figures_are_rendered_from_their_results_file() -> None:
    """The README's main-job table and time are what benchmarks/main_job.py renders from main_job.json, and that
    file was measured by one version of the code (the one the run_all tier records)."""
    import json

    import main_job

    data = json.loads((ROOT / "benchmarks" / "results" / "main_job.json").read_text())
    readme = (ROOT / "README.md").read_text()
    for line in main_job.readme_lines(data):
        assert line in readme, f"README.md does not quote main_job.json as rendered: {line!r}"
    assert len(data["measured_at"]) == 1 and data["environment"]["source_sha256"]


def _unsourced_figures(text: str, link: str) -> tuple[list[str], int]:
    """Decimal figures of the paragraphs and tables of ``text`` that name a results file (``link`` finds the file
    stems; a table takes the names of the paragraph above it) which stand in none of those files, as written or
    rounded to as many places (half up). The zoo's sidecars (``zoo/*.json``: the dense models' accuracies) count as
    a source too. Returns the missing figures and how many were checked."""
    results = ROOT / "benchmarks" / "results"
    zoo = "".join(p.read_text() for p in sorted((ROOT / "zoo").glob("*_cifar10.json")))
    missing, checked, previous = [], 0, []
    for block in re.split(r"\n\s*\n", text):
        links = re.findall(link, block)
        if not links and block.lstrip().startswith("|"):
            links = previous
        previous = links
        if not links or "```" in block:
            continue
        files = [results / f"{s}.{e}" for s in dict.fromkeys(links) for e in ("md", "json")]
        source = "".join(f.read_text() for f in files if f.is_file()) + zoo
        values = [float(v) for v in re.findall(r"-?\d+\.\d+", source)]
        for figure in re.findall(r"(?<![\w.])(\d+\.\d+)(?![\w])", block):
            checked += 1
            half = 0.5 * 10 ** -len(figure.split(".")[1])
            if figure not in source and not any(abs(v - float(figure)) <= half + 1e-9 for v in values):
                missing.append(f"{figure} (sources: {', '.join(dict.fromkeys(links))})")
    return missing, checked


def test_every_results_figure_in_the_readme_is_in_its_results_file() -> None:
    """Each decimal figure of a README paragraph or table that links a results file stands in that file: none copied
    wrong, none without a source."""
    missing, checked = _unsourced_figures((ROOT / "README.md").read_text(), r"\(benchmarks/results/(\w+)\.md\)")
    assert checked > 50, "the README's results figures were not found"
    assert not missing, f"README figures not in their results files: {missing}"


# The zoo's build log quotes candidates that are no longer files (their sidecars are in the git history).
NOT_RENDERED = {"zoo.md"}


@pytest.mark.parametrize("doc", sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name not in NOT_RENDERED))
def test_every_results_figure_in_the_docs_is_in_its_results_file(doc: str) -> None:
    """The same for every page of docs/ (results files named as links or as ``benchmarks/results/x.md`` paths)."""
    missing, _ = _unsourced_figures((ROOT / "docs" / doc).read_text(), r"benchmarks/results/(\w+)\.(?:md|json)")
    assert not missing, f"docs/{doc}: figures not in the results files the paragraph names: {missing}"
