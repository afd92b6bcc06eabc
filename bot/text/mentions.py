"""Make text unable to ping anyone, even if it were sent without ``allowed_mentions``.

Every send already passes ``AllowedMentions.none()``; this is the second lock on the door.
A model that learned chat logs will sooner or later write ``@everyone`` or ``<@123>``; a zero-width
space after the ``@`` keeps the text readable and makes Discord see plain words.
"""

from __future__ import annotations

import re

ZWSP = "\u200b"
# @everyone / @here, and user, nickname, role and slash-command-like mentions: <@1>, <@!1>, <@&1>.
_MASS = re.compile(r"@(everyone|here)", re.IGNORECASE)
_ID_MENTION = re.compile(r"<@([!&]?\d+)>")


def defuse_mentions(text: str) -> str:
    text = _MASS.sub(lambda m: f"@{ZWSP}{m.group(1)}", text)
    return _ID_MENTION.sub(lambda m: f"<@{ZWSP}{m.group(1)}>", text)


def has_live_mention(text: str) -> bool:
    """True when the text still contains something Discord would turn into a ping."""
    return bool(_MASS.search(text) or _ID_MENTION.search(text))
