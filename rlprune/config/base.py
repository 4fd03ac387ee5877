"""What every config shares: strict pydantic models (``extra="forbid"``: a typo'd key is an error), typed seeds,
devices and run names, YAML loading with ``--set a.b=value`` overrides, one-line validation errors that name the
field and file, and the resolved config written into the run directory."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from rlprune.errors import RLPruneError
from rlprune.io.files import atomic_write_text
from rlprune.io.safe import check_tree, dump_yaml, parse_yaml, quote, read_yaml_file

T = TypeVar("T", bound=BaseModel)


# Seeds feed NumPy, torch and stable-baselines3, whose generators take 0 <= seed < 2**32.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


# Where tensors go: resolved by rlprune.seeding.resolve_device (auto: CUDA when present).
Device = Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:[0-9]{1,2})?)$")]


def _run_name(value: str) -> str:
    """A run's folder name under ``output_dir``: one path component, so a run never writes outside its folder."""
    if not value or value in (".", "..") or any(c in value for c in "/\\\0") or len(value) > 100:
        raise ValueError("expected a folder name of 1-100 characters without '/' or '\\' (not '.' or '..')")
    return value


RunName = Annotated[str, AfterValidator(_run_name)]


class Strict(BaseModel):
    # allow_inf_nan=False: ``.inf`` / ``.nan`` are refused in every float field (an infinite lr "trains" a NaN model)
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


def _parse_scalar(text: str, key: str) -> Any:
    """Parse an override value as YAML (``5``, ``0.1``, ``3e-4``, ``true``, ``[1, 2]``, ``null``); text that is not
    YAML is kept as a string, but a value over the limits or non-finite (``.nan``) is refused, naming the key."""
    try:
        return parse_yaml(text, f"--set {key}")
    except RLPruneError as exc:
        if "not valid YAML" in str(exc):
            return text
        raise


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config dict (before validation, so they are validated too)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RLPruneError(f"--set '{item}': expected KEY=VALUE, e.g. train.epochs=5")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:  # absent, or `null` in the file: the override starts the section
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RLPruneError(
                    f"--set '{item[:80]}': '{part}' is a {type(child).__name__} here, not a section; set it whole "
                    f"in YAML flow style, e.g. --set '{part}={{...}}'"
                )
            node = child
        node[parts[-1]] = _parse_scalar(value, key)
    return check_tree(raw, "--set")


def _fields_at(schema: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (sub)model that ``loc``'s last key belongs to, for "did you mean" hints."""
    model: Any = schema
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _describe(error: ValidationError, source: str, schema: type[BaseModel]) -> str:
    errors = error.errors()
    # A misspelled key also shows up as a missing one: report the unknown key, it names the typo.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(first["loc"][-1]), _fields_at(schema, first["loc"]), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{source}: unknown key '{loc}'{hint}"
    if kind == "missing":
        return f"{source}: missing required key '{loc}'"
    msg = first["msg"].removeprefix("Value error, ")
    # quote at most a few dozen characters of the value: an input can be huge (or hostile)
    return f"{source}: {loc[:80]}: {msg[:120]} (got {quote(first.get('input'))})"


def load_config(path: str | Path, schema: type[T], overrides: list[str] | None = None) -> T:
    """Read a YAML config, apply overrides, validate; every problem becomes a one-line :class:`RLPruneError`."""
    path = Path(path)
    raw = read_yaml_file(path, "config file") or {}  # size, depth, alias and finite-number limits first
    if not isinstance(raw, dict):
        raise RLPruneError(f"{path}: expected a mapping at the top level")
    return validate(schema, apply_overrides(raw, overrides or []), str(path))


def validate(schema: type[T], data: dict[str, Any], source: str) -> T:
    """Validate ``data`` against ``schema``; the first problem becomes a one-line :class:`RLPruneError` that starts
    with ``source`` (a config file, or what built the data)."""
    try:
        return schema.model_validate(check_tree(data, source))
    except ValidationError as exc:
        raise RLPruneError(_describe(exc, source, schema)) from exc


def write_resolved(config: BaseModel, run_dir: Path) -> Path:
    """Save the fully resolved config (defaults included) as ``config.yaml`` in the run directory."""
    path = run_dir / "config.yaml"
    atomic_write_text(path, dump_yaml(config.model_dump(mode="json")))
    return path
