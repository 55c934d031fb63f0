"""Frames: JSON Schema validation against proto-schemas/schemas, and the
small pattern language the scenarios use to expect and build frames.

Patterns (in `expect`, `wait_output`, `wait_frame` steps):
- a string `"$name"` captures the value on first use and must equal it after;
  `"$_"` matches any value that is present;
- a string `"@J1"` is the job id of the scenario's job `J1` (fake runs),
  `"@J1.trace_id"` its trace id;
- an object matches when every key it names matches (other keys are free);
  the key `"!absent"` lists keys that must be missing;
- a list matches element by element; anything else by equality.

Templates (in `send`, `driver` steps) use the same `$name` / `@J1` forms and
are replaced by the captured values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
SCHEMA_BASE = "https://jobgate.dev/schemas/"


class FrameRefused(Exception):  # noqa: N818 - a verdict on a scenario, read as one
    """A frame the schemas refuse."""


def _registry() -> Registry:
    resources = []
    for path in sorted(SCHEMAS_DIR.glob("*.json")):
        schema = json.loads(path.read_text())
        resource = Resource.from_contents(schema)
        resources.append((SCHEMA_BASE + path.name, resource))
    return Registry().with_resources(resources)


class Schemas:
    """Validators for the WebSocket frames, resolving `$ref`s over schemas/."""

    def __init__(self) -> None:
        registry = _registry()
        self._validators = {
            name: Draft202012Validator(
                json.loads((SCHEMAS_DIR / f"{name}.json").read_text()), registry=registry
            )
            for name in ("ws_server_message", "ws_client_message")
        }

    def errors(self, schema: str, frame: Any) -> list[str]:
        validator = self._validators[schema]
        found = sorted(validator.iter_errors(frame), key=lambda error: list(error.path))
        return [_describe(error) for error in found]

    def check_server_frame(self, frame: Any) -> None:
        """Raises FrameRefused when `frame` is not a valid server → client frame."""
        problems = self.errors("ws_server_message", frame)
        if problems:
            raise FrameRefused(
                f"server frame refused by ws_server_message.json: {json.dumps(frame)}: "
                + "; ".join(problems)
            )

    def client_frame_problems(self, frame: Any) -> list[str]:
        return self.errors("ws_client_message", frame)


def _describe(error: Any) -> str:
    # oneOf errors say little; name the best sub-error of each branch.
    where = "/".join(str(part) for part in error.absolute_path) or "(root)"
    if error.context:
        best = min(error.context, key=lambda sub: len(list(sub.absolute_path)) * -1)
        return f"{where}: {error.message[:120]} (e.g. {best.message[:160]})"
    return f"{where}: {error.message[:200]}"


class Bindings:
    """Captured `$name` values and the scenario's jobs, for `@J1` references."""

    def __init__(self, jobs: dict[str, dict[str, Any]] | None = None) -> None:
        self.values: dict[str, Any] = {}
        self.jobs = jobs or {}

    def resolve_reference(self, text: str) -> Any:
        name, _, field = text[1:].partition(".")
        job = self.jobs.get(name)
        if job is None:
            raise KeyError(f"unknown job reference {text}")
        return job[field or "job_id"]

    def matches(self, pattern: Any, value: Any, *, present: bool = True) -> bool:
        """Does `value` match `pattern`? Captures are only kept on a whole match."""
        trial = dict(self.values)
        if _match(pattern, value, present, trial, self):
            self.values = trial
            return True
        return False

    def fill(self, template: Any) -> Any:
        if isinstance(template, str):
            if template.startswith("$") and template != "$_":
                if template[1:] not in self.values:
                    raise KeyError(f"{template} was never captured")
                return self.values[template[1:]]
            if template.startswith("@"):
                return self.resolve_reference(template)
            return template
        if isinstance(template, dict):
            return {key: self.fill(item) for key, item in template.items()}
        if isinstance(template, list):
            return [self.fill(item) for item in template]
        return template


def _match(pattern: Any, value: Any, present: bool, trial: dict[str, Any], b: Bindings) -> bool:
    if isinstance(pattern, str) and pattern.startswith("$"):
        return present and _capture(pattern[1:], value, trial)
    if not present:
        return False
    if isinstance(pattern, str) and pattern.startswith("@"):
        return bool(b.resolve_reference(pattern) == value)
    if isinstance(pattern, dict):
        return isinstance(value, dict) and _match_object(pattern, value, trial, b)
    if isinstance(pattern, list):
        return (
            isinstance(value, list)
            and len(value) == len(pattern)
            and all(_match(p, v, True, trial, b) for p, v in zip(pattern, value, strict=True))
        )
    return _same_scalar(pattern, value)


def _capture(name: str, value: Any, trial: dict[str, Any]) -> bool:
    """`$name`: captures the value the first time, must be equal after (`$_`: anything)."""
    if name == "_":
        return True
    if name in trial:
        return bool(trial[name] == value)
    trial[name] = value
    return True


def _match_object(
    pattern: dict[str, Any], value: dict[str, Any], trial: dict[str, Any], b: Bindings
) -> bool:
    for key, sub in pattern.items():
        if key == "!absent":
            if any(name in value for name in sub):
                return False
            continue
        if not _match(sub, value.get(key), key in value, trial, b):
            return False
    return True


def _same_scalar(pattern: Any, value: Any) -> bool:
    """Equal and of the same type, except that an int and a float may be equal (never a bool)."""
    return (bool(pattern == value) and type(pattern) is type(value)) or (
        isinstance(pattern, int | float)
        and not isinstance(pattern, bool)
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and pattern == value
    )
