"""What a pool child started with --reload counts as a change to the code it imported."""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.worker.executors.python_child import CodeWatcher


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "watched_module.py").write_text("VALUE = 1\n")
    past = time.time_ns() - 10**9
    os.utime(tmp_path / "watched_module.py", ns=(past, past))
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    sys.modules.pop("watched_module", None)


def test_a_module_imported_after_the_start_is_no_change_until_it_is_edited(
    project: Path,
) -> None:
    watcher = CodeWatcher((str(project),))
    importlib.import_module("watched_module")
    assert not watcher.changed()
    assert not watcher.changed()  # seen before, the same
    later = time.time_ns() + 10**9
    os.utime(project / "watched_module.py", ns=(later, later))
    assert watcher.changed()


def test_modules_outside_the_watched_directories_are_not_looked_at(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    watcher = CodeWatcher((str(tmp_path_factory.mktemp("elsewhere")),))
    importlib.import_module("watched_module")
    later = time.time_ns() + 10**9
    os.utime(project / "watched_module.py", ns=(later, later))
    assert not watcher.changed()


def test_a_deleted_module_is_a_change(project: Path) -> None:
    watcher = CodeWatcher((str(project),))
    importlib.import_module("watched_module")
    assert not watcher.changed()
    (project / "watched_module.py").unlink()
    assert watcher.changed()
