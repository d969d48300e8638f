"""Worker sessions: an id in use answers only to its current secret, and after a restart to
any secret the server issued for it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from corral.errors import ConfigError
from corral.server.sessions import WorkerSessions, load_worker_key

KEY = b"k" * 32


def test_an_id_in_use_answers_only_to_its_current_secret() -> None:
    sessions = WorkerSessions(KEY)
    first = sessions.admit("w", "", in_use=False)
    assert first is not None and not first.returning
    assert sessions.admit("w", "", in_use=True) is None
    assert sessions.admit("w", "nonce.forged", in_use=True) is None
    assert sessions.admit("w", "é" * 20, in_use=True) is None  # not ASCII: refused, not raised
    again = sessions.admit("w", first.secret, in_use=True)
    assert again is not None and again.returning and again.secret == first.secret


def test_a_secret_issued_before_a_restart_reclaims_the_id_and_an_older_one_then_does_not() -> None:
    before = WorkerSessions(KEY)
    old = before.admit("w", "", in_use=False)
    before.forget("w")
    current = before.admit("w", "", in_use=False)
    assert old is not None and current is not None
    after = WorkerSessions(KEY)  # a restart: no sessions known, the same key
    reclaimed = after.admit("w", current.secret, in_use=True)
    assert reclaimed is not None and reclaimed.returning
    assert after.admit("w", old.secret, in_use=True) is None  # the session is known again
    assert WorkerSessions(b"x" * 32).admit("w", current.secret, in_use=True) is None
    assert after.admit("other", current.secret, in_use=True) is None


def test_the_worker_key_is_private_and_kept(tmp_path: Path) -> None:
    key = load_worker_key(tmp_path)
    assert stat.S_IMODE((tmp_path / "worker.key").stat().st_mode) == 0o600
    assert load_worker_key(tmp_path) == key and len(key) == 32
    (tmp_path / "worker.key").write_bytes(b"short")
    with pytest.raises(ConfigError, match="delete it"):
        load_worker_key(tmp_path)
