"""Keep notices an operator can do nothing about out of the user-facing commands.

Each entry is a message a library prints on every run although nothing is wrong; ``-v`` shows
them all again. Real problems are fixed at their source instead (for example the engine passes
the KV cache under the argument name the installed transformers expects).
"""

from __future__ import annotations

import logging
import warnings

# discord.py logs these at start-up; the bot never joins voice channels.
_DISCORD_VOICE_NOTICES = ("voice will NOT be supported",)


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def quiet_libraries(verbose: bool) -> None:
    """Silence the harmless library notices unless ``verbose``; call once, after logging is set up.

    - transformers / PEFT / bitsandbytes FutureWarnings and DeprecationWarnings about their own
      internals (e.g. PEFT calling ``is_gradient_checkpointing``, deprecated in transformers 5);
    - bitsandbytes' WARNING-level notices about optional CPU kernels it could not load;
    - discord.py's "PyNaCl / davey is not installed, voice will NOT be supported".
    """
    if verbose:
        return
    for module in ("transformers", "peft", "bitsandbytes", "accelerate", "torch"):
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=rf"{module}(\.|$)")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger("discord.client").addFilter(_DropMessages(_DISCORD_VOICE_NOTICES))
