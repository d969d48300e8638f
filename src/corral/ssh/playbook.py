"""Playbooks: ordered steps, each with one action and optional guards, loaded strictly from YAML.

```yaml
vars: {disk: /dev/vdb}          # defaults; inventory vars and --var override them
steps:
  - name: system disks agree
    check: lsblk -ndo NAME,SIZE,MOUNTPOINT   # hosts must print the same, or the play stops
  - command: mkfs.ext4 {{ disk }}
    unless: blkid {{ disk }}
    sudo: true
  - script: files/setup.sh       # local file, uploaded and run
    args: --quick
  - put: {src: conf/, dest: /etc/myapp}
  - get: {src: /var/log/myapp, dest: logs}   # into logs/<host>/
```

Every step has exactly one action key. Common keys: name, creates, removes, unless, only_if, sudo,
run_once, ignore_errors (put and get take no sudo: files move as the login user; check steps take
only name, sudo and expect). Unknown keys are errors that list the allowed ones. `{{ name }}` in any
string is replaced by a variable; an undefined one is an error before anything runs.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from corral.ssh.errors import PlaybookError

ACTIONS = ("command", "script", "put", "get", "check")
GUARD_KEYS = ("creates", "removes", "unless", "only_if")
_COMMON_KEYS = ("name", *GUARD_KEYS, "run_once", "ignore_errors")
ALLOWED_KEYS: dict[str, tuple[str, ...]] = {
    "command": ("command", *_COMMON_KEYS, "sudo"),
    "script": ("script", "args", *_COMMON_KEYS, "sudo"),
    "put": ("put", *_COMMON_KEYS),
    "get": ("get", *_COMMON_KEYS),
    "check": ("check", "name", "sudo", "expect"),
}
EXPECT_VALUES = ("same", "any")
_TRANSFER_KEYS = ("src", "dest")
_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@dataclass(frozen=True)
class Guards:
    """Conditions checked on the host before a step; a step whose guard says so is skipped."""

    creates: str | None = None  # skip when this path exists
    removes: str | None = None  # skip when this path does not exist
    unless: str | None = None  # skip when this command succeeds
    only_if: str | None = None  # skip when this command fails

    def any(self) -> bool:
        return any((self.creates, self.removes, self.unless, self.only_if))


@dataclass(frozen=True)
class Step:
    """One playbook step. `action` picks which of the action fields matter."""

    index: int
    name: str
    action: str
    command: str = ""  # command and check
    script: Path | None = None
    args: str = ""
    src: str = ""  # put and get
    dest: str = ""
    guards: Guards = field(default_factory=Guards)
    sudo: bool | None = None  # None: the host's `sudo` var decides
    run_once: bool = False
    ignore_errors: bool = False
    expect: str = "same"

    @property
    def label(self) -> str:
        return f"step {self.index} ({self.name})"

    def render(self, variables: Mapping[str, Any]) -> Step:
        """This step with `{{ var }}` replaced in every string; undefined vars raise."""

        def sub(text: str) -> str:
            def one(match: re.Match[str]) -> str:
                name = match.group(1)
                if name not in variables:
                    raise PlaybookError(
                        f"{self.label}: variable {name!r} is not defined; set it in the playbook's "
                        f"vars, the inventory, or with --var {name}=VALUE"
                    )
                return str(variables[name])

            return _TEMPLATE.sub(one, text)

        guards = Guards(
            *(None if value is None else sub(value) for value in _guard_values(self.guards))
        )
        script = Path(sub(str(self.script))) if self.script else None
        return replace(
            self,
            command=sub(self.command),
            script=script,
            args=sub(self.args),
            src=sub(self.src),
            dest=sub(self.dest),
            guards=guards,
        )


@dataclass(frozen=True)
class Playbook:
    """A loaded, validated playbook."""

    path: Path
    steps: tuple[Step, ...]
    vars: Mapping[str, Any] = field(default_factory=dict)


def _guard_values(guards: Guards) -> tuple[str | None, ...]:
    return (guards.creates, guards.removes, guards.unless, guards.only_if)


def load_playbook(path: Path) -> Playbook:
    """Read and validate a playbook; relative script and put paths are relative to its folder."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PlaybookError(f"cannot read playbook {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise PlaybookError(f"{path}: not valid YAML: {exc}") from exc
    if isinstance(document, list):
        document = {"steps": document}
    if not isinstance(document, dict):
        raise PlaybookError(f"{path}: expected a list of steps or a mapping with 'steps'")
    unknown = set(document) - {"vars", "steps"}
    if unknown:
        raise PlaybookError(
            f"{path}: unknown top-level key {sorted(unknown)[0]!r}; allowed: vars, steps"
        )
    variables = document.get("vars") or {}
    if not isinstance(variables, dict):
        raise PlaybookError(f"{path}: vars must be a mapping")
    raw_steps = document.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise PlaybookError(f"{path}: 'steps' must be a non-empty list")
    steps = tuple(
        _parse_step(raw, number, path.parent, path) for number, raw in enumerate(raw_steps, 1)
    )
    return Playbook(path=path, steps=steps, vars={str(k): v for k, v in variables.items()})


def _parse_step(raw: Any, index: int, base: Path, path: Path) -> Step:
    where = f"{path}: step {index}"
    if not isinstance(raw, dict):
        raise PlaybookError(f"{where}: a step must be a mapping such as {{command: uptime}}")
    actions = [key for key in raw if key in ACTIONS]
    if len(actions) != 1:
        raise PlaybookError(f"{where}: {_action_problem(raw, actions)}")
    action = actions[0]
    allowed = ALLOWED_KEYS[action]
    for key in raw:
        if key not in allowed:
            raise PlaybookError(
                f"{where}: unknown key {key!r} for a {action} step{_did_you_mean(key, allowed)}; "
                f"allowed: {', '.join(allowed)}"
            )
    name = str(raw.get("name") or _default_name(action, raw[action]))
    where = f"{path}: step {index} ({name})"
    guards = Guards(*(_optional_text(raw, key, where) for key in GUARD_KEYS))
    fields: dict[str, Any] = {
        "index": index,
        "name": name,
        "action": action,
        "guards": guards,
        "sudo": _optional_bool(raw, "sudo", where),
        "run_once": bool(_optional_bool(raw, "run_once", where)),
        "ignore_errors": bool(_optional_bool(raw, "ignore_errors", where)),
    }
    if action in ("command", "check"):
        fields["command"] = _required_text(raw, action, where)
    if action == "check":
        expect = raw.get("expect", "same")
        if expect not in EXPECT_VALUES:
            raise PlaybookError(f"{where}: expect must be one of {', '.join(EXPECT_VALUES)}")
        fields["expect"] = expect
    if action == "script":
        script = base / _required_text(raw, "script", where)
        if "{{" not in str(script) and not script.is_file():
            raise PlaybookError(f"{where}: script {script} does not exist")
        fields["script"] = script
        fields["args"] = _optional_text(raw, "args", where) or ""
    if action in ("put", "get"):
        spec = raw[action]
        if not isinstance(spec, dict):
            raise PlaybookError(f"{where}: {action} needs a mapping {{src: ..., dest: ...}}")
        for key in spec:
            if key not in _TRANSFER_KEYS:
                raise PlaybookError(f"{where}: unknown key {key!r} in {action}; allowed: src, dest")
        src = _required_text(spec, "src", where)
        dest = _required_text(spec, "dest", where)
        if action == "put":
            src = str(base / src)
            if "{{" not in src and not Path(src).exists():
                raise PlaybookError(f"{where}: local file or directory {src} does not exist")
        fields["src"], fields["dest"] = src, dest
    return Step(**fields)


def _action_problem(raw: Mapping[str, Any], actions: list[str]) -> str:
    """Why a step has no single action: several given, or none, most often a misspelt one."""
    wanted = f"a step needs exactly one action ({', '.join(ACTIONS)})"
    if actions:
        return f"{wanted}; found {', '.join(actions)}"
    known = {key for keys in ALLOWED_KEYS.values() for key in keys}
    unknown = [str(key) for key in raw if key not in known]
    if not unknown:
        return f"{wanted}; found none"
    key = unknown[0]
    return (
        f"unknown key {key!r}{_did_you_mean(key, ACTIONS + tuple(sorted(known)))}; {wanted}, "
        f"plus any of: {', '.join(_COMMON_KEYS)}, sudo, args, expect"
    )


def _did_you_mean(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _default_name(action: str, value: Any) -> str:
    """A step's name when it gives none: its command, or what a put or get copies where."""
    if action in ("put", "get") and isinstance(value, dict):
        return f"{action} {value.get('src')} -> {value.get('dest')}"
    return _short(value)


def _short(value: Any) -> str:
    text = str(value).strip().splitlines()[0] if str(value).strip() else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _required_text(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str | int | float) or isinstance(value, bool) or str(value) == "":
        raise PlaybookError(f"{where}: {key} must be a non-empty string")
    return str(value)


def _optional_text(raw: Mapping[str, Any], key: str, where: str) -> str | None:
    return _required_text(raw, key, where) if raw.get(key) is not None else None


def _optional_bool(raw: Mapping[str, Any], key: str, where: str) -> bool | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, bool):
        raise PlaybookError(f"{where}: {key} must be true or false, not {value!r}")
    return value
