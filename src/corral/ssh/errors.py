"""Errors of `corral ssh` that stop a run before any host is contacted.

Problems with one host (unreachable, refused auth, a failing command) never raise: they become that
host's status in the run summary. These exceptions are for input that makes the whole run
meaningless, so the operator fixes it first.
"""

from __future__ import annotations

from corral.errors import ConfigError


class InventoryError(ConfigError):
    """A host file, YAML inventory, --hosts list or --limit pattern is wrong; names file:line."""


class PlaybookError(ConfigError):
    """A playbook does not parse or a step is malformed; names step, key and allowed keys."""


class FdLimitError(ConfigError):
    """The process cannot open enough files for --forks; says which limit to raise or lower."""


class CredentialError(ConfigError):
    """A password source (environment variable, file, prompt) or a key file cannot be read."""
