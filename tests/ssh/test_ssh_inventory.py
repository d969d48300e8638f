"""Inventory parsing and selection: plain files, YAML groups and vars, --hosts and --limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.ssh.errors import InventoryError
from corral.ssh.inventory import load_inventory, read_host_names


def test_plain_host_file_with_comments_users_ports_and_ipv6(tmp_path: Path) -> None:
    path = tmp_path / "hosts.txt"
    path.write_text("# fleet\nweb1\n\nops@web2:2222  # second\n[::1]:22\nweb1\n")
    inventory = load_inventory(str(path))
    assert inventory.names() == ["web1", "ops@web2:2222", "[::1]:22"]
    web2 = inventory.hosts[1]
    assert (web2.user, web2.address, web2.port) == ("ops", "web2", 2222)
    assert inventory.hosts[2].address == "::1"


@pytest.mark.parametrize("bad", ["web 1", "ops@", "web1:port", "web1:70000", "a@b@c"])
def test_unparseable_lines_are_reported_with_file_and_line(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "hosts.txt"
    path.write_text(f"good1\n{bad}\n")
    with pytest.raises(InventoryError, match=f"{path}:2"):
        load_inventory(str(path))


def test_yaml_groups_and_vars_resolve_most_specific_first(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "vars: {user: ops, disk: /dev/vdb}\n"
        "groups:\n"
        "  web:\n"
        "    vars: {sudo: true, port: 2200}\n"
        "    hosts:\n"
        "      web1: {address: 10.0.0.1}\n"
        "      web2: {disk: /dev/vdc, port: 2201}\n"
        "  db:\n"
        "    hosts: [db1, web1]\n"
        "hosts:\n"
        "  root@lone:2222: {}\n"
    )
    inventory = load_inventory(str(path))
    hosts = {host.name: host for host in inventory.hosts}
    assert list(hosts) == ["web1", "web2", "db1", "root@lone:2222"]
    assert (hosts["web1"].address, hosts["web1"].port, hosts["web1"].sudo) == (
        "10.0.0.1",
        2200,
        True,
    )
    assert hosts["web1"].groups == ("web", "db")
    assert hosts["web2"].port == 2201 and hosts["web2"].vars["disk"] == "/dev/vdc"
    assert hosts["db1"].user == "ops" and hosts["db1"].port is None and not hosts["db1"].sudo
    assert hosts["root@lone:2222"].user == "root" and hosts["root@lone:2222"].port == 2222
    assert inventory.limit("db").names() == ["web1", "db1"]
    assert inventory.limit("web*,root@*").names() == ["web1", "web2", "root@lone:2222"]
    with pytest.raises(InventoryError, match="matches no group"):
        inventory.limit("cache")


def test_yaml_unknown_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("groups:\n  web:\n    host: [a]\n")
    with pytest.raises(InventoryError, match=r"unknown key 'host'.*allowed: vars, hosts"):
        load_inventory(str(path))


def test_host_lists_and_failed_files(tmp_path: Path) -> None:
    assert load_inventory("a,ops@b:2200").names() == ["a", "ops@b:2200"]
    assert load_inventory("solo,").names() == ["solo"]
    failed = tmp_path / "failed.txt"
    failed.write_text("a\nops@b:2200\n")
    assert read_host_names(f"@{failed}") == ["a", "ops@b:2200"]
    assert load_inventory(f"@{failed}").names() == ["a", "ops@b:2200"]
    inventory = load_inventory("a,ops@b:2200,c")
    assert inventory.pick(read_host_names(f"@{failed}")).names() == ["a", "ops@b:2200"]
    with pytest.raises(InventoryError, match="not in"):
        inventory.pick(["zzz"])
    with pytest.raises(InventoryError, match="does not exist"):
        load_inventory(str(tmp_path / "missing.txt"))
