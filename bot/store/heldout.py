"""The held-out review rows: a fixed share of moderated replies that no training run ever sees.

The promotion gate (``trainer/gate.py``) judges a candidate adapter on these rows only, so its
figures measure what a version does on decisions it never learned from. Which rows are held out
depends on nothing but the row's log id (a hash, like the trainer's validation split), so the split is the same on every machine, in every
export and in every run, and a row never moves from one side to the other as the log grows.

Both exports leave these rows out (``export-reviews`` and its ``--preferences`` file); the gate
reads them from the store, under the same privacy rules. It lives beside the store because the
bot counts decisions with it too (the scheduler's preference-stage threshold).
"""

from __future__ import annotations

import hashlib

# One row in ten. Fixed in code, not configurable: a share that changed would move rows that
# were trained on into the held-out side, and the gate would then grade a version on its own
# training data.
HELDOUT_SHARE = 0.1
_SALT = "heldout"


def heldout_fraction(log_id: int) -> float:
    """A stable number in [0, 1) for a log row: the first 8 bytes of SHA-256 of ``heldout:<id>``."""
    digest = hashlib.sha256(f"{_SALT}:{int(log_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_heldout(log_id: int) -> bool:
    """Whether the review row ``log_id`` belongs to the gate's held-out split (about 1 row in 10)."""
    return heldout_fraction(log_id) < HELDOUT_SHARE
