"""The environment jobs start from: the worker's, less corral's own variables and scrubbed ones."""

from __future__ import annotations

from corral.worker.executors.base import clean_environment


def test_corral_variables_and_scrubbed_names_or_patterns_are_left_out() -> None:
    worker = {
        "PATH": "/bin",
        "CORRAL_TOKEN": "secret",
        "CORRAL_URL": "http://x",
        "DB_PASSWORD": "p",
        "AWS_SECRET_ACCESS_KEY": "k",
        "AWS": "kept: the pattern needs the underscore",
    }
    assert clean_environment(worker, ["DB_PASSWORD", "AWS_*"]) == {
        "PATH": "/bin",
        "AWS": "kept: the pattern needs the underscore",
    }
    assert not any(name.startswith("CORRAL_") for name in clean_environment())
