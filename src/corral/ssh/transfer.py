"""Copying files and directory trees over SFTP, with permissions and times preserved.

Both directions have the same, repeatable meaning: the *contents* of a source directory land in the
destination directory (created if missing), so running a copy twice gives the same tree, unlike
`cp -r`, which nests the second copy inside the first. A source file lands at the destination path,
or inside it when the destination is an existing directory or ends with `/`.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
from pathlib import Path

import asyncssh


class TransferError(Exception):
    """A copy could not be done; the message names the path and the reason."""


async def put(conn: asyncssh.SSHClientConnection, source: Path, dest: str) -> str:
    """Upload a local file or directory tree; returns a one-line description of what was done."""
    listing = await asyncio.to_thread(_local_listing, source)
    async with conn.start_sftp_client() as sftp:
        try:
            if listing is not None:
                entries, mode = listing
                await _ensure_remote_dir(sftp, dest)
                if entries:
                    await sftp.put(entries, dest, preserve=True, recurse=True)
                await sftp.chmod(dest, mode)
                return f"copied directory {source} to {dest}"
            target = dest
            if dest.endswith("/") or await sftp.isdir(dest):
                target = posixpath.join(dest, source.name)
            parent = posixpath.dirname(target)
            if parent:
                await _ensure_remote_dir(sftp, parent)
            await sftp.put(str(source), target, preserve=True)
            return f"copied {source} to {target}"
        except (OSError, asyncssh.SFTPError) as exc:
            raise TransferError(_describe(exc, "upload")) from exc


async def get(conn: asyncssh.SSHClientConnection, source: str, dest: Path) -> str:
    """Download a remote file or directory tree into the local directory `dest` (created)."""
    async with conn.start_sftp_client() as sftp:
        try:
            if not await sftp.exists(source):
                raise TransferError(f"remote path {source} does not exist")
            await asyncio.to_thread(_make_local_dir, dest)
            if await sftp.isdir(source):
                names = sorted(n for n in await sftp.listdir(source) if n not in (".", ".."))
                entries = [posixpath.join(source, name) for name in names]
                if entries:
                    await sftp.get(entries, str(dest), preserve=True, recurse=True)
                attrs = await sftp.stat(source)
                if attrs.permissions is not None:
                    await asyncio.to_thread(os.chmod, dest, attrs.permissions & 0o7777)
                return f"copied directory {source} to {dest}"
            await sftp.get(source, str(dest), preserve=True)
            return f"copied {source} to {dest / posixpath.basename(source)}"
        except (OSError, asyncssh.SFTPError) as exc:
            raise TransferError(_describe(exc, "download")) from exc


def _local_listing(source: Path) -> tuple[list[str], int] | None:
    """A local directory's entries and mode; None for a file; TransferError when missing."""
    if not source.exists():
        raise TransferError(f"local path {source} does not exist")
    if not source.is_dir():
        return None
    return sorted(str(child) for child in source.iterdir()), source.stat().st_mode & 0o7777


def _make_local_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise TransferError(f"local path {path} is a file where a directory is expected")
    path.mkdir(parents=True, exist_ok=True)


async def _ensure_remote_dir(sftp: asyncssh.SFTPClient, path: str) -> None:
    """Create `path` and its parents; a file in the way is an error that names it."""
    if await sftp.exists(path) and not await sftp.isdir(path):
        raise TransferError(f"remote path {path} is a file where a directory is expected")
    await sftp.makedirs(path, exist_ok=True)


def _describe(exc: Exception, action: str) -> str:
    src = getattr(exc, "srcpath", None)
    dst = getattr(exc, "dstpath", None)
    where = ""
    if isinstance(src, bytes) and isinstance(dst, bytes):
        where = f" ({src.decode(errors='replace')} -> {dst.decode(errors='replace')})"
    reason = exc.reason if isinstance(exc, asyncssh.SFTPError) else str(exc)
    return f"{action} failed{where}: {reason}"
