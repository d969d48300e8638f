"""Inventories: which hosts a run targets, how to reach each one, and the variables each one has.

Four sources, all giving the same `Inventory`:

- a plain host file: one `[user@]host[:port]` a line (`[::1]:22` for IPv6), `#` comments, blanks;
- a YAML file with top-level `vars`, `groups` (each with `vars` and `hosts`) and ungrouped `hosts`;
  host entries are names or `name: {vars}`; the vars `address`, `user`, `port`, `key` and `sudo`
  say how to connect, every other var is free for playbook templates;
- an Ansible inventory, INI (`[group]`, `host var=value`, `[group:vars]`, `[group:children]`) or
  YAML (`all: {hosts, vars, children}`), read as Ansible reads it: `ansible_host`, `ansible_user`,
  `ansible_port`, `ansible_ssh_private_key_file` and `ansible_become` say how to connect;
- a comma-separated list (`web1,web2`, or `web1,` for one host) or `@file` naming a plain host file.

Variables resolve from the most specific place: host, then its groups in file order, then top level
(Ansible files: host, then child groups before their parents, then `all`).
"""

from __future__ import annotations

import fnmatch
import re
import shlex
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
_ANSIBLE_GROUP_KEYS = ("hosts", "children", "vars")
#: An INI section header: `[group]`, `[group:vars]` or `[group:children]`; `[::1]` is a host.
_INI_SECTION = re.compile(r"^\[(?P<group>[A-Za-z0-9_.-]+)(?::(?P<kind>vars|children))?\]$")
#: What any INI header looks like (at most one colon; an IPv6 address has two or more).
_INI_HEADER_LIKE = re.compile(r"^\[[A-Za-z_][\w.-]*(?::[A-Za-z]+)?\]$")
_INI_HOST_RANGE = re.compile(r"\[([0-9]+|[a-z]):([0-9]+|[a-z])\]")
#: Ansible's connection variables, each mapped to the Host field it sets (old names too).
_ANSIBLE_CONNECTION = {
    "ansible_host": "address",
    "ansible_ssh_host": "address",
    "ansible_user": "user",
    "ansible_ssh_user": "user",
    "ansible_port": "port",
    "ansible_ssh_port": "port",
    "ansible_ssh_private_key_file": "key",
    "ansible_private_key_file": "key",
    "ansible_become": "sudo",
}


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
    if path.suffix == ".ini" or _looks_like_ini(text):
        return _unique(_resolve_ansible(_parse_ini(text, spec), spec), spec)
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
    if _is_ansible_yaml(document):
        return _resolve_ansible(_parse_ansible_yaml(document, source), source)
    top = _mapping(
        document, source, "the file (or Ansible's all: {hosts, children, vars})", _YAML_TOP_KEYS
    )
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


# Ansible inventories: both forms are parsed into `_AnsibleGroup`s, then resolved in one place.


@dataclass
class _AnsibleGroup:
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)  # host -> its own vars
    children: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)


def _looks_like_ini(text: str) -> bool:
    """An Ansible INI file has a `[group]` header or a `host var=value` line; a plain host file
    has neither (its `[::1]:22` lines have two colons or more)."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if _INI_HEADER_LIKE.match(line) or (len(line.split()) > 1 and "=" in line):
            return True
    return False


def _parse_ini(text: str, source: str) -> dict[str, _AnsibleGroup]:
    groups: dict[str, _AnsibleGroup] = {"all": _AnsibleGroup(), "ungrouped": _AnsibleGroup()}
    group, kind = "ungrouped", ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        where = f"{source}:{number}"
        if section := _INI_SECTION.match(line):
            group, kind = section.group("group"), section.group("kind") or ""
            groups.setdefault(group, _AnsibleGroup())
            continue
        if line.startswith("["):
            raise InventoryError(
                f"{where}: cannot parse section {line!r}; write [group], [group:vars] or "
                "[group:children]"
            )
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise InventoryError(f"{where}: cannot parse {line!r}: {exc}") from None
        if kind == "children":
            if len(words) != 1:
                raise InventoryError(f"{where}: a [{group}:children] line names one group")
            groups[group].children.append(words[0])
        elif kind == "vars":
            name, sep, value = line.partition("=")
            if not sep or not name.strip():
                raise InventoryError(f"{where}: a [{group}:vars] line is NAME=VALUE, not {line!r}")
            groups[group].vars[name.strip()] = value.strip()
        else:
            host_vars = {}
            for word in words[1:]:
                name, sep, value = word.partition("=")
                if not sep or not name:
                    raise InventoryError(
                        f"{where}: {word!r} after host {words[0]!r} is not NAME=VALUE"
                    )
                host_vars[name] = value
            for host in _expand_host_range(words[0], where):
                groups[group].hosts.setdefault(host, {}).update(host_vars)
    return groups


def _expand_host_range(pattern: str, where: str) -> list[str]:
    """Ansible's `web[01:20].example.com` and `db-[a:c]`: one name per value, zero padding kept."""
    match = _INI_HOST_RANGE.search(pattern)
    if not match:
        return [pattern]
    start, end = match.groups()
    head, tail = pattern[: match.start()], pattern[match.end() :]
    if start.isdigit() != end.isdigit():
        raise InventoryError(f"{where}: range [{start}:{end}] mixes numbers and letters")
    if start.isdigit():
        width = len(start) if start.startswith("0") else 0
        values = [str(n).zfill(width) for n in range(int(start), int(end) + 1)]
    else:
        values = [chr(c) for c in range(ord(start), ord(end) + 1)]
    if not values:
        raise InventoryError(f"{where}: range [{start}:{end}] is empty")
    return [name for value in values for name in _expand_host_range(head + value + tail, where)]


def _is_ansible_yaml(document: Any) -> bool:
    """Ansible's YAML has groups at the top (`all:`, or named groups) whose keys are hosts,
    children and vars; corral's own has `vars`, `groups` and `hosts` at the top."""
    if not isinstance(document, dict) or not document:
        return False
    if "all" in document:
        return True
    return not set(document) & set(_YAML_TOP_KEYS) and all(
        value is None or (isinstance(value, dict) and set(value) <= set(_ANSIBLE_GROUP_KEYS))
        for value in document.values()
    )


def _parse_ansible_yaml(document: dict[str, Any], source: str) -> dict[str, _AnsibleGroup]:
    groups: dict[str, _AnsibleGroup] = {"all": _AnsibleGroup(), "ungrouped": _AnsibleGroup()}

    def add(name: str, value: Any) -> None:
        body = _mapping(value, source, f"group {name!r}", _ANSIBLE_GROUP_KEYS)
        group = groups.setdefault(name, _AnsibleGroup())
        group.vars.update(_mapping(body.get("vars"), source, f"vars of group {name!r}"))
        for host, host_vars in _mapping(body.get("hosts"), source, f"hosts of {name!r}").items():
            own = _mapping(host_vars, source, f"host {host!r} in group {name!r}")
            group.hosts.setdefault(host, {}).update(own)
        for child, child_value in _mapping(
            body.get("children"), source, f"children of {name!r}"
        ).items():
            if child not in group.children:
                group.children.append(child)
            add(child, child_value)

    for name, value in document.items():
        add(str(name), value)
    return groups


def _resolve_ansible(groups: dict[str, _AnsibleGroup], source: str) -> list[Host]:
    """Hosts with Ansible's precedence: `all` vars, then groups from parents to children (by
    name among groups of one depth), then the host's own; each host is in its groups'
    ancestors too, so `--limit` takes a parent group as Ansible does."""
    parents: dict[str, set[str]] = {name: set() for name in groups}
    for name, group in groups.items():
        for child in group.children:
            if child not in groups:
                groups[child] = _AnsibleGroup()
                parents[child] = set()
            parents[child].add(name)
    depth: dict[str, int] = {}

    def depth_of(name: str, seen: tuple[str, ...]) -> int:
        if name in seen:
            raise InventoryError(f"{source}: group {name!r} is its own child ({' > '.join(seen)})")
        if name not in depth:
            above = [depth_of(p, (*seen, name)) for p in parents[name] - {"all"}]
            depth[name] = 0 if name == "all" else 1 + max(above, default=0)
        return depth[name]

    order = sorted(groups, key=lambda name: (depth_of(name, ()), name))
    own: dict[str, dict[str, Any]] = {}
    direct: dict[str, set[str]] = {}
    for name, group in groups.items():
        for host, host_vars in group.hosts.items():
            own.setdefault(host, {}).update(host_vars)
            direct.setdefault(host, set()).add(name)
    hosts = []
    for host in own:
        member = set(direct[host]) - ({"ungrouped"} if direct[host] != {"ungrouped"} else set())
        pending = list(member)
        while pending:
            for parent in parents[pending.pop()]:
                if parent not in member:
                    member.add(parent)
                    pending.append(parent)
        member.add("all")
        ordered = [name for name in order if name in member]
        merged: dict[str, Any] = {}
        for name in ordered:
            merged.update(groups[name].vars)
        merged.update(own[host])
        hosts.append(_ansible_host(host, merged, tuple(ordered), f"{source}: host {host!r}"))
    return hosts


def _ansible_host(
    name: str, host_vars: dict[str, Any], groups: tuple[str, ...], where: str
) -> Host:
    """A Host from Ansible's variables; a `name:port` name sets the port, as in Ansible."""
    connection: dict[str, Any] = {}
    for var, value in host_vars.items():
        if var in _ANSIBLE_CONNECTION:
            connection.setdefault(_ANSIBLE_CONNECTION[var], value)
    base, sep, port_text = name.rpartition(":")
    if sep and port_text.isdigit() and ":" not in base:
        name_port: int | None = int(port_text)
    else:
        base, name_port = name, None
    port = _ansible_port(connection.get("port", name_port), where)
    become = connection.get("sudo", False)
    if isinstance(become, str):
        become = {
            "true": True,
            "yes": True,
            "1": True,
            "false": False,
            "no": False,
            "0": False,
        }.get(become.lower(), become)
    if not isinstance(become, bool):
        raise InventoryError(f"{where}: ansible_become must be true or false, not {become!r}")
    key = connection.get("key")
    return Host(
        name=base,
        address=str(connection.get("address", base)),
        user=str(connection["user"]) if connection.get("user") else None,
        port=port,
        key=str(Path(str(key)).expanduser()) if key else None,
        sudo=become,
        groups=groups,
        vars=host_vars,
    )


def _ansible_port(value: Any, where: str) -> int | None:
    if value is None:
        return None
    port = int(value) if isinstance(value, int) or str(value).isdigit() else -1
    if not 0 < port < 65536:
        raise InventoryError(
            f"{where}: ansible_port must be a number from 1 to 65535, not {value!r}"
        )
    return port
