"""Reading files a user can be handed (configs, plans, sidecars, policies, records) without being hurt by them.

Every such file is parsed under limits before any schema sees it: a size cap, a nesting-depth cap, a cap on the
number of values after YAML aliases are expanded (an "alias bomb" is a few hundred bytes that expand to gigabytes),
and no non-finite number (``NaN``, ``Infinity``, ``1e999``). Whatever goes wrong becomes one :class:`RLPruneError`
line that names the file and quotes at most a few dozen characters of the offending value, so a hostile value can
neither exhaust memory nor flood the terminal.

Also here: writing with a clear one-line error when the disk is full, and an OS lock on a run directory.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import inspect
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rlprune.errors import RLPruneError

MAX_FILE_BYTES = 16 * 1024 * 1024  # a config, plan, sidecar or policy JSON is kilobytes; 16 MiB is generous
MAX_LINE_BYTES = 1024 * 1024  # one record of episodes.jsonl
MAX_DEPTH = 32  # the deepest legitimate file (a checkpoint's embedded config) nests 5 levels
MAX_VALUES = 200_000  # values after alias expansion: a ResNet-110 plan with kept indices is ~10k
MAX_ALIASES = 100
QUOTE_CHARS = 40
F = TypeVar("F", bound=Callable[..., Any])


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr`` of ``value`` cut to ``limit`` characters: error messages never echo a huge or hostile input."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # pragma: no cover - a self-referencing object
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def clip(text: str, limit: int = 100) -> str:
    """``text`` shortened to at most ``limit`` characters at a word boundary (never mid-word), marked with '...'."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 3].rsplit(" ", 1)[0]
    return cut + " ..."


def json_safe(value: Any) -> Any:
    """A copy with every non-finite float replaced by None, for outputs: JSON has no NaN, and a report or record
    another tool cannot parse is worse than one that says "no value"."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def check_tree(data: Any, source: str, *, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES) -> Any:
    """Walk plain data (dicts, lists, scalars) iteratively; refuse too deep, too many values or a non-finite float.

    Iterative, so a 10 000-deep structure cannot exhaust the Python stack; shared sub-objects (YAML aliases) are
    counted once per occurrence, so an alias bomb is refused by its expanded size before anything expands it.
    """
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    seen = 0
    while stack:
        node, depth, where = stack.pop()
        seen += 1
        if seen > max_values:
            raise RLPruneError(f"{source}: more than {max_values} values (after expanding aliases); refusing to load")
        if depth > max_depth:
            raise RLPruneError(f"{source}: nested deeper than {max_depth} levels at '{where[:60]}'")
        if isinstance(node, float) and not math.isfinite(node):
            raise RLPruneError(f"{source}: '{where[:60] or '(top level)'}' is {node}; expected a finite number")
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str | int | float | bool) and key is not None:
                    raise RLPruneError(f"{source}: '{where[:60]}' has a key of type {type(key).__name__}")
                stack.append((value, depth + 1, f"{where}.{key}" if where else str(key)))
        elif isinstance(node, list | tuple):
            for i, value in enumerate(node):
                stack.append((value, depth + 1, f"{where}[{i}]"))
    return data


def _read_limited(path: Path, what: str, limit: int = MAX_FILE_BYTES) -> str:
    if not path.is_file():
        raise RLPruneError(f"{path}: {what} not found")
    try:
        size = path.stat().st_size
        if size > limit:
            raise RLPruneError(f"{path}: {size} bytes is too large for a {what} (limit {limit})")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RLPruneError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise RLPruneError(f"{path}: cannot read {what} ({exc.strerror or exc})") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is not finite")
    return value


def parse_json(text: str, source: str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON text under the limits: no ``NaN``/``Infinity``/overflowing numbers, bounded depth and size."""
    if len(text) > MAX_FILE_BYTES:
        raise RLPruneError(f"{source}: {len(text)} characters is too large (limit {MAX_FILE_BYTES})")
    # Count brackets first: the C decoder recurses per level, so a deep input is refused before it runs.
    depth = level = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            level += 1
            depth = max(depth, level)
        elif ch in "]}":
            level -= 1
    if depth > max_depth:
        raise RLPruneError(f"{source}: nested deeper than {max_depth} levels")
    try:
        data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise RLPruneError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    except (ValueError, RecursionError) as exc:
        raise RLPruneError(f"{source}: not valid JSON ({clip(str(exc), 80)})") from exc
    return check_tree(data, source, max_depth=max_depth)


def read_json_file(path: Path, what: str) -> Any:
    """A JSON file a user may have been handed, parsed under the limits (see :func:`parse_json`)."""
    return parse_json(_read_limited(path, what), str(path))


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a nesting-depth and alias-count limit enforced while the document is composed."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise RLPruneError(f"more than {MAX_ALIASES} YAML aliases")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise RLPruneError(f"nested deeper than {MAX_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Dumper(yaml.SafeDumper):
    """The safe dumper, told the loader's extra float form so that a string like ``1e3`` is written quoted."""


# YAML 1.1 reads ``3e-4`` and ``1.0e3`` as strings (its floats need a dot and a signed exponent); a learning rate
# written that way is meant as a number, as YAML 1.2 reads it. The dumper knows it too: text that would read back as
# a number is quoted.
for _cls in (_LimitedLoader, _Dumper):
    _cls.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )


def dump_yaml(data: Any) -> str:
    """YAML that :func:`parse_yaml` reads back as the same data (keys in their order)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """Values a composed YAML node expands to, with aliases counted at every use (memoized per node)."""
    sizes: dict[int, int] = {}
    entered: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:
        current, done = stack.pop()
        if id(current) in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(current, yaml.SequenceNode):
            children = list(current.value)
        elif isinstance(current, yaml.MappingNode):
            children = [n for pair in current.value for n in pair]
        if done:
            sizes[id(current)] = min(limit + 1, 1 + sum(sizes[id(c)] for c in children))
            continue
        if id(current) in entered:
            raise RLPruneError("a YAML alias refers to the collection that contains it")
        entered.add(id(current))
        stack.append((current, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(node)]


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML safely (no tags that build objects) under the size, depth, alias and expansion limits."""
    if len(text) > MAX_FILE_BYTES:
        raise RLPruneError(f"{source}: {len(text)} characters is too large (limit {MAX_FILE_BYTES})")
    loader = None
    try:
        loader = _LimitedLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_VALUES) > MAX_VALUES:
            raise RLPruneError(f"{source}: more than {MAX_VALUES} values after expanding aliases; refusing to load")
        data = loader.construct_document(node)
    except RLPruneError as exc:
        message = str(exc)
        raise RLPruneError(message if message.startswith(source) else f"{source}: {message}") from None
    except yaml.YAMLError as exc:
        raise RLPruneError(f"{source}: not valid YAML ({str(exc).splitlines()[0][:100]})") from exc
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise RLPruneError(f"{source}: not valid YAML ({type(exc).__name__})") from exc
    finally:
        if loader is not None:
            loader.dispose()
    return check_tree(data, source)


def read_yaml_file(path: Path, what: str = "config file") -> Any:
    return parse_yaml(_read_limited(path, what), str(path))


def disk_error(exc: BaseException, path: Path | str) -> RLPruneError | None:
    """A one-line error for a failed write the user can fix (disk full, quota, permissions, read-only), or None."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text or "Disk quota" in text:
        return RLPruneError(f"{path}: no space left on the device; free some space and run the same command again")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR):
        return RLPruneError(f"{path}: cannot write here ({os.strerror(code)})")
    return None


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn a disk-full / permission failure while writing ``path`` into one line; other errors pass unchanged."""
    try:
        yield
    except RLPruneError:
        raise
    except Exception as exc:
        error = disk_error(exc, path)
        if error is None:
            raise
        raise error from exc


class RunLock:
    """An exclusive OS lock (``flock``) on ``<dir>/../.<name>.lock``: it dies with its process, so a killed run never
    leaves a stale lock, and a second run into the same directory is refused with the holder's pid.

    The lock file sits beside the directory, not in it, so a run refused before it starts leaves no run directory.
    """

    def __init__(self, directory: Path, what: str = "run directory") -> None:
        self.directory = Path(directory)
        self.path = self.directory.parent / f".{self.directory.name}.lock"
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        while True:
            with writing(self.path):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                try:
                    pid = "".join(ch for ch in os.pread(fd, 32, 0).decode(errors="replace") if ch.isdigit())
                finally:
                    os.close(fd)
                raise RLPruneError(
                    f"{self.directory}: {self.what} is in use by {'pid ' + pid if pid else 'another process'}; "
                    "wait for it to finish or use another name"
                ) from exc
            try:  # the previous holder may have removed the file between our open and our lock: lock the current one
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # removed while still held: nothing is left behind
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def locked(directory_of: Callable[[dict[str, Any]], Path], what: str) -> Callable[[F], F]:
    """Decorate a function that writes into one directory so that it holds that directory's :class:`RunLock` while it
    runs. ``directory_of`` maps the call's bound arguments (by name) to the directory."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with RunLock(Path(directory_of(bound.arguments)), what):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
