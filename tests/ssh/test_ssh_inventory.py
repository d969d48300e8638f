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


ANSIBLE_INI = """\
# production, as Ansible reads it
jump01 ansible_host=192.0.2.10

[web]
web[01:03].example.com ansible_user=deploy
canary ansible_host=10.0.0.99 ansible_port=2222 http_port=8080  # the odd one

[db]
db-[a:b].example.com
pg.example.com:5433

[web:vars]
http_port=80
ansible_become=true
ansible_user=webops

[prod:children]
web
db

[prod:vars]
ansible_user=ops
env=production
"""

ANSIBLE_YAML = """\
all:
  vars:
    ntp: pool.ntp.org
  hosts:
    jump01: {ansible_host: 192.0.2.10}
  children:
    prod:
      vars: {ansible_user: ops, env: production}
      children:
        web:
          vars: {http_port: 80, ansible_become: true, ansible_user: webops}
          hosts:
            web01.example.com: {ansible_user: deploy}
            canary: {ansible_host: 10.0.0.99, ansible_port: 2222, http_port: 8080}
        db:
          hosts:
            db-a.example.com:
            "pg.example.com:5433":
"""


def test_ansible_ini_inventory_with_groups_children_vars_and_ranges(tmp_path: Path) -> None:
    path = tmp_path / "hosts"  # Ansible's usual name: no extension
    path.write_text(ANSIBLE_INI)
    inventory = load_inventory(str(path))
    assert inventory.names() == [
        "jump01",
        "web01.example.com",
        "web02.example.com",
        "web03.example.com",
        "canary",
        "db-a.example.com",
        "db-b.example.com",
        "pg.example.com",
    ]
    hosts = {host.name: host for host in inventory.hosts}
    assert (hosts["jump01"].address, hosts["jump01"].groups) == ("192.0.2.10", ("all", "ungrouped"))
    web = hosts["web02.example.com"]
    assert (web.address, web.user, web.sudo, web.vars["http_port"]) == (
        "web02.example.com",
        "deploy",  # the host's own var beats its groups'
        True,
        "80",
    )
    assert web.groups == ("all", "prod", "web")
    canary = hosts["canary"]
    assert (canary.address, canary.port, canary.user) == ("10.0.0.99", 2222, "webops")
    assert canary.vars["http_port"] == "8080" and canary.vars["env"] == "production"
    assert (hosts["db-a.example.com"].user, hosts["db-a.example.com"].sudo) == ("ops", False)
    assert hosts["pg.example.com"].port == 5433
    assert inventory.limit("web").names()[-1] == "canary"
    assert inventory.limit("prod").names() == inventory.names()[1:]
    assert inventory.limit("db,jump*").names() == [
        "jump01",
        "db-a.example.com",
        "db-b.example.com",
        "pg.example.com",
    ]


def test_ansible_yaml_inventory_resolves_like_the_ini_form(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yml"
    path.write_text(ANSIBLE_YAML)
    inventory = load_inventory(str(path))
    hosts = {host.name: host for host in inventory.hosts}
    assert list(hosts) == [
        "jump01",
        "web01.example.com",
        "canary",
        "db-a.example.com",
        "pg.example.com",
    ]
    assert hosts["web01.example.com"].user == "deploy" and hosts["web01.example.com"].sudo
    assert (hosts["canary"].port, hosts["canary"].user, hosts["canary"].vars["http_port"]) == (
        2222,
        "webops",
        8080,
    )
    assert hosts["db-a.example.com"].user == "ops"
    assert hosts["jump01"].vars == {"ntp": "pool.ntp.org", "ansible_host": "192.0.2.10"}
    assert hosts["pg.example.com"].port == 5433
    assert inventory.limit("prod").names() == list(hosts)[1:]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[web]\nweb1 ansible_port=ssh\n", "ansible_port must be a number from 1 to 65535"),
        ("[web]\nweb1 ansible_become=maybe\n", "ansible_become must be true or false"),
        ("[web]\nweb1 color\n", r"hosts:2: 'color' after host 'web1' is not NAME=VALUE"),
        ("[web:vars]\njust-a-word\n", r"hosts:2: a \[web:vars\] line is NAME=VALUE"),
        ("[a:children]\nb\n[b:children]\na\n[a]\nh1\n", "is its own child"),
        ("[web:hosts]\nweb1\n", r"hosts:1: cannot parse section '\[web:hosts\]'"),
    ],
)
def test_ansible_ini_mistakes_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "hosts"
    path.write_text(text)
    with pytest.raises(InventoryError, match=message):
        load_inventory(str(path))


def test_ansible_yaml_unknown_group_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text("all:\n  children:\n    web:\n      host: {web1: }\n")
    with pytest.raises(InventoryError, match=r"unknown key 'host'.*allowed: hosts, children, vars"):
        load_inventory(str(path))
