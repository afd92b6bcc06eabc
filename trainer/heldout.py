"""The held-out review rows: a fixed share of moderated replies that no training run ever sees.

The promotion gate (:mod:`trainer.gate`) judges a candidate adapter on these rows only, so its
figures measure what a version does on decisions it never learned from. Which rows are held out
depends on nothing but the row's log id (a hash, like the validation split of
:func:`trainer.dataset.split_fraction`), so the split is the same on every machine, in every
export and in every run, and a row never moves from one side to the other as the log grows.

Both exports leave these rows out (``export-reviews`` and its ``--preferences`` file); the gate
reads them from the store, under the same privacy rules.
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
