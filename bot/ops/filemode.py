"""Give files written atomically the permissions the umask asks for.

Atomic writes go through ``tempfile.mkstemp`` (and safetensors' own temp file), which creates
files 0600 whatever the umask, so a dataset, an adapter or the ``CURRENT`` pointer renamed into
place would be readable by its owner only: a bot running as another user of the same group, or
a backup job, could not read it. Every such file is chmod-ed to ``0666 & ~umask`` before it is
renamed into place, as ``open()`` would have created it.
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process umask (e.g. ``0o022``), read without changing it where the OS allows.

    ``/proc/self/status`` names it on Linux 4.7+; elsewhere it is read by setting and restoring
    it, which is brief but not atomic, so call this before starting threads that create files.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file now: ``0o666 & ~umask`` (e.g. ``0o644``)."""
    return 0o666 & ~current_umask()


def respect_umask(path: str | Path) -> None:
    """Set ``path`` (a file, or every file below a folder) to :func:`default_file_mode`.

    Folders keep their mode (``mkdir`` already honours the umask). Raises OSError if a file
    cannot be changed, e.g. one owned by another user.
    """
    mode = default_file_mode()
    root = Path(path)
    files = [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else [root]
    for file in files:
        os.chmod(file, mode)
