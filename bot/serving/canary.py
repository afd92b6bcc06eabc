"""Which requests a persona's canary serves: one independent random draw per request.

Both backends hold a persona's ``CURRENT`` version and, when ``adapters/<persona>/CANARY``
names one, a candidate version with a share ``p`` of the requests. The choice is made once,
when a request is admitted, and the request keeps that version to its last token.

Why a draw per request and not per member (sticky assignment, as web A/B tests do):

* what is measured is the moderators' decision on each reply, and the versions are compared
  with a binomial confidence interval (``python -m trainer versions``), which assumes
  independent trials. With per-member stickiness a handful of very active members would make
  most of one version's sample, and their replies are correlated (same person, same topics).
* a channel's conversation has several members, so stickiness per member would still mix
  versions within one conversation; stickiness per channel would leave a handful of units
  (channels), far too few to compare two versions in days.
* the serving layer sees a rendered prompt, not who is talking; the draw needs nothing more.

What it costs: one member may see replies of both versions in a row. Both versions were
trained on the same persona's data, so the voice is the same; a canary that is clearly worse
is what the per-version figures are there to catch.
"""

from __future__ import annotations

import random


class CanarySplit:
    """Draws, per request, whether it goes to the canary.

    ``seed`` makes the sequence of draws reproducible (tests); None seeds from the operating
    system. Not thread-safe: each backend draws on one thread (the local engine's worker
    thread, the vLLM backend's event loop).
    """

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def takes(self, share: float) -> bool:
        """True with probability ``share`` (0 < share < 1): this request gets the canary."""
        return self._rng.random() < share
