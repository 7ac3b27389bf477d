"""A small tmpfs, mounted by the test that needs a disk to fill up for real.

Mounting needs root and a kernel that lets this process mount; elsewhere the tests that
use it skip with the reason, and the same logic is covered through a store or file that
raises the errors a full disk raises.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Big enough for a fresh database, its WAL and a few hundred acknowledgment lines.
SIZE = "2m"
CHUNK = 64 * 1024


class SmallDisk:
    """A mounted tmpfs; :meth:`fill` takes every free byte, :meth:`free` gives them back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / "filler"

    def fill(self) -> None:
        with open(self._filler, "ab", buffering=0) as handle:
            block = bytes(CHUNK)
            try:
                while True:
                    handle.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
            # The page cache may still hold room for a smaller write: take it too.
            for size in (4096, 512, 64, 1):
                try:
                    while True:
                        handle.write(bytes(size))
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)


def _mount(path: Path) -> str | None:
    """Mount a tmpfs at ``path``; the reason it cannot be done, or ``None``."""
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if result.returncode != 0:
        return f"mounting a tmpfs is not permitted here: {result.stderr.strip()}"
    return None


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    path = tmp_path / "small-disk"
    path.mkdir()
    if (reason := _mount(path)) is not None:
        pytest.skip(f"no real full disk: {reason}")
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True, timeout=10)
