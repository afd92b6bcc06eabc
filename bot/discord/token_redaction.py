"""The token never reaches a log: a logging filter that blanks it in every record."""

from __future__ import annotations

import logging
import sys

from bot.config import redact


class RedactingFilter(logging.Filter):
    """Replaces the token in every record (message, arguments and traceback) before it is written."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secret:
            message = record.getMessage()
            if self.secret in message:
                record.msg, record.args = redact(message, self.secret), ()
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text, self.secret)
        return True


def install_token_redaction(token: str) -> RedactingFilter:
    """Attach the filter to every handler of the root logger (handlers see propagated records)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    flt = RedactingFilter(token)
    for handler in root.handlers:
        handler.addFilter(flt)
    return flt
