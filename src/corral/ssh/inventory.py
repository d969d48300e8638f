"""Inventories: which hosts a run targets, how to reach each one, and the variables each one has.

Three sources, all giving the same `Inventory`:

- a plain host file: one `[user@]host[:port]` a line (`[::1]:22` for IPv6), `#` comments, blanks;
- a YAML file with top-level `vars`, `groups` (each with `vars` and `hosts`) and ungrouped `hosts`;
  host entries are names or `name: {vars}`; the vars `address`, `user`, `port`, `key` and `sudo`
  say how to connect, every other var is free for playbook templates;
- a comma-separated list (`web1,web2`, or `web1,` for one host) or `@file` naming a plain host file.

Variables resolve from the most specific place: host, then its groups in file order, then top level.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from corral.ssh.errors import InventoryError

#: Vars with a meaning for the connection; all others are free-form template variables.
CONNECTION_VARS = ("address", "user", "port", "key", "sudo")

_HOST_SPEC = re.compile(
    r"^(?:(?P<user>[^@\s:/]+)@)?(?:\[(?P<ipv6>[0-9A-Fa-f:.%\w]+)\]|(?P<host>[^@\s:/\[\]]+))"
    r"(?::(?P<port>\d+))?$"
)
_YAML_TOP_KEYS = ("vars", "groups", "hosts")
_YAML_GROUP_KEYS = ("vars", "hosts")


@dataclass(frozen=True)
class Host:
    """One target; `name` is unique in its inventory and names the host's files in a run dir."""

    name: str
    address: str
    user: str | None = None
    port: int | None = None
    key: str | None = None
    sudo: bool = False
    groups: tuple[str, ...] = ()
    vars: Mapping[str, Any] = field(default_factory=dict)

    def template_vars(self) -> dict[str, Any]:
        """Variables a playbook can use for this host: its own vars plus `host` and `address`."""
        return {**self.vars, "host": self.name, "address": self.address}


@dataclass(frozen=True)
class Inventory:
    """An ordered list of hosts with unique names; runs visit them in this order."""

    hosts: tuple[Host, ...]
    source: str = ""

    def names(self) -> list[str]:
        return [host.name for host in self.hosts]

    def limit(self, patterns: str) -> Inventory:
        """Keep hosts in a group named by a pattern or whose name matches a glob (`web*,db1`)."""
        wanted = [part.strip() for part in patterns.split(",") if part.strip()]
        if not wanted:
            raise InventoryError(f"--limit {patterns!r} names no group or host pattern")
        kept: list[Host] = []
        for pattern in wanted:
            matched = [
                host
                for host in self.hosts
                if pattern in host.groups or fnmatch.fnmatchcase(host.name, pattern)
            ]
            if not matched:
                raise InventoryError(
                    f"--limit {pattern!r} matches no group and no host name in {self.source}"
                )
            kept.extend(matched)
        selected = {host.name for host in kept}
        return Inventory(tuple(h for h in self.hosts if h.name in selected), self.source)

    def pick(self, names: Sequence[str]) -> Inventory:
        """Keep only the named hosts (for `--hosts`), refusing names the inventory lacks."""
        known = set(self.names())
        unknown = [name for name in names if name not in known]
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise InventoryError(
                f"--hosts names {len(unknown)} host(s) not in {self.source}: {shown}; "
                "list them in the inventory or drop them from --hosts"
            )
        wanted = set(names)
        return Inventory(tuple(h for h in self.hosts if h.name in wanted), self.source)


def parse_host_spec(text: str, where: str) -> Host:
    """Parse `[user@]host[:port]`; `where` (file:line) goes into the error message."""
    match = _HOST_SPEC.match(text)
    if not match:
        raise InventoryError(
            f"{where}: cannot parse host {text!r}; write [user@]host[:port], e.g. ops@web1:2222"
        )
    port = match.group("port")
    port_number = int(port) if port else None
    if port_number is not None and not 0 < port_number < 65536:
        raise InventoryError(f"{where}: port {port_number} in {text!r} is not between 1 and 65535")
    address = match.group("ipv6") or match.group("host")
    return Host(name=text, address=address, user=match.group("user"), port=port_number)


def parse_host_lines(lines: Iterable[str], source: str) -> list[Host]:
    """Parse the lines of a plain host file; blank lines and `#` comments are ignored."""
    hosts = []
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            hosts.append(parse_host_spec(line, f"{source}:{number}"))
    return hosts


def read_host_names(spec: str) -> list[str]:
    """Names from `--hosts`: a comma-separated list or `@file` (one a line, e.g. failed.txt)."""
    if spec.startswith("@"):
        path = Path(spec[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            raise InventoryError(f"--hosts {spec}: cannot read {path}: {exc.strerror}") from exc
        return [h.name for h in parse_host_lines(text.splitlines(), str(path))]
    names = [part.strip() for part in spec.split(",") if part.strip()]
    for name in names:
        parse_host_spec(name, "--hosts")
    return names


def load_inventory(spec: str) -> Inventory:
    """Load an inventory from a file path (plain or YAML), `@file`, or a comma-separated list."""
    if spec.startswith("@"):
        spec = spec[1:]
    elif "," in spec and not Path(spec).exists():
        hosts = [parse_host_spec(p.strip(), "host list") for p in spec.split(",") if p.strip()]
        return _unique(hosts, "host list")
    path = Path(spec)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise InventoryError(
            f"inventory {spec!r} does not exist; give a host file, a YAML inventory, "
            "or a comma-separated list such as web1,web2 (web1, for one host)"
        ) from exc
    except OSError as exc:
        raise InventoryError(f"cannot read inventory {spec}: {exc.strerror}") from exc
    if path.suffix in (".yaml", ".yml"):
        return _unique(_parse_yaml(text, spec), spec)
    return _unique(parse_host_lines(text.splitlines(), spec), spec)


def _unique(hosts: Iterable[Host], source: str) -> Inventory:
    """Drop repeated names (a host listed twice runs once), keeping the first position."""
    seen: dict[str, Host] = {}
    for host in hosts:
        seen.setdefault(host.name, host)
    if not seen:
        raise InventoryError(f"inventory {source} lists no hosts")
    return Inventory(tuple(seen.values()), source)


def _parse_yaml(text: str, source: str) -> list[Host]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InventoryError(f"{source}: not valid YAML: {exc}") from exc
    top = _mapping(document, source, "the file", _YAML_TOP_KEYS)
    top_vars = _mapping(top.get("vars"), source, "vars")
    own: dict[str, dict[str, Any]] = {}
    inherited: dict[str, dict[str, Any]] = {}
    groups_of: dict[str, list[str]] = {}

    def add(value: Any, context: str, group: str | None, group_vars: Mapping[str, Any]) -> None:
        for name, host_vars in _host_entries(value, source, context):
            if name not in own:
                own[name], inherited[name], groups_of[name] = {}, {}, []
            own[name].update(host_vars)
            inherited[name].update(group_vars)
            if group:
                groups_of[name].append(group)

    groups = _mapping(top.get("groups"), source, "groups")
    for group_name, group_value in groups.items():
        group = _mapping(group_value, source, f"group {group_name!r}", _YAML_GROUP_KEYS)
        group_vars = _mapping(group.get("vars"), source, f"vars of group {group_name!r}")
        add(group.get("hosts"), f"hosts of group {group_name!r}", str(group_name), group_vars)
    add(top.get("hosts"), "hosts", None, {})
    return [
        _host_from_vars(
            name, {**top_vars, **inherited[name]}, own[name], tuple(groups_of[name]), source
        )
        for name in own
    ]


def _mapping(
    value: Any, source: str, context: str, allowed: Sequence[str] | None = None
) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InventoryError(f"{source}: {context} must be a mapping, not {type(value).__name__}")
    if allowed is not None:
        for key in value:
            if key not in allowed:
                raise InventoryError(
                    f"{source}: unknown key {key!r} in {context}; allowed: {', '.join(allowed)}"
                )
    return {str(k): v for k, v in value.items()}


def _host_entries(value: Any, source: str, context: str) -> list[tuple[str, dict[str, Any]]]:
    if value is None:
        return []
    if isinstance(value, list):
        return [(str(item), {}) for item in value]
    entries = _mapping(value, source, context)
    return [(name, _mapping(v, source, f"host {name!r}")) for name, v in entries.items()]


def _host_from_vars(
    name: str,
    inherited: dict[str, Any],
    own: dict[str, Any],
    groups: tuple[str, ...],
    source: str,
) -> Host:
    """A host from its group/top vars, its `[user@]host[:port]` name, then its own vars."""
    where = f"{source}: host {name!r}"
    if "address" in own or "address" in inherited:
        spec = Host(name=name, address=str(own.get("address", inherited.get("address"))))
    else:
        spec = parse_host_spec(name, where)
    from_name = {key: value for key in ("user", "port") if (value := getattr(spec, key))}
    host_vars = {**inherited, **from_name, **own}
    port = host_vars.get("port")
    if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
        raise InventoryError(f"{where}: port must be a number from 1 to 65535, not {port!r}")
    sudo = host_vars.get("sudo", False)
    if not isinstance(sudo, bool):
        raise InventoryError(f"{where}: sudo must be true or false, not {sudo!r}")
    key = host_vars.get("key")
    return Host(
        name=name,
        address=spec.address,
        user=str(host_vars["user"]) if "user" in host_vars else None,
        port=port,
        key=str(Path(str(key)).expanduser()) if key else None,
        sudo=sudo,
        groups=groups,
        vars={k: v for k, v in host_vars.items() if k not in CONNECTION_VARS},
    )
