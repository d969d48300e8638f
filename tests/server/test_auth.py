"""TokenStore: names are not replaced by accident, and an admin token always remains."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import Conflict
from corral.server.auth import Role, TokenStore, new_token


def test_a_taken_name_needs_replace_and_replacing_retires_the_old_token(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path)
    tokens.load_or_create()
    first = tokens.create("ci", Role.SUBMIT)
    with pytest.raises(Conflict, match="--replace"):
        tokens.create("ci", Role.READ)
    assert tokens.role_of(first) is Role.SUBMIT
    second = tokens.create("ci", Role.READ, replace=True)
    assert tokens.role_of(first) is None
    found = tokens.lookup(second)
    assert found is not None and (found.name, found.role) == ("ci", Role.READ)


def test_the_last_admin_token_stays_and_its_file_follows_a_replacement(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path)
    admin = tokens.load_or_create()
    assert admin is not None
    with pytest.raises(Conflict, match="only admin token"):
        tokens.revoke("admin")
    with pytest.raises(Conflict, match="only admin token"):
        tokens.create("admin", Role.READ, replace=True)
    assert tokens.role_of(admin) is Role.ADMIN

    renewed = tokens.create("admin", Role.ADMIN, replace=True)
    assert tokens.admin_token_path.read_text().strip() == renewed
    tokens.create("root2", Role.ADMIN)
    assert tokens.revoke("admin") and not tokens.revoke("admin")


def test_no_token_starts_with_a_dash_that_a_command_line_would_take_for_an_option() -> None:
    # One token in 64 would otherwise: `--token -abc` is an error in argparse.
    tokens = [new_token() for _ in range(2000)]
    assert not [token for token in tokens if token.startswith("-")]
    assert len(set(tokens)) == 2000 and {len(token) for token in tokens} == {43}
