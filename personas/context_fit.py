"""Fitting a prompt to the context a model actually has for one request.

A card's ``history_budget_tokens`` says how much history the persona would like; the model (the
local engine's ``max_position_embeddings``, a vLLM server's ``--max-model-len``) says how much
fits: prompt tokens plus the reply's room (``max_new_tokens``) may not exceed its context. A
busy channel used to fill the card's budget, overflow a small model and get every member "This
conversation is too long" until someone ran ``/reset``. Here the history budget is cut to what
the context leaves, so the member always gets an answer; the reply's room is only shortened when
even the newest message would not fit otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from personas.render import InputError, PromptRenderer, RenderedPrompt, Turn

# The newest message keeps at least this many tokens (its end) before the reply's room shrinks.
MIN_NEWEST_TOKENS = 32
# A reply shorter than this is not worth generating: the card's settings must change instead.
MIN_REPLY_TOKENS = 16
# Rendering joins lines, which can tokenize a few tokens differently from the lines counted one
# by one; each pass removes the measured excess, so two passes settle it in practice.
MAX_PASSES = 4


class ContextTooSmallError(InputError):
    """Even the newest message and a minimal reply do not fit the model's context next to the
    card's system prompt and examples. ``str()`` is for members; ``operator_line`` says what to
    change. An InputError: the front ends show it without a traceback."""

    def __init__(self, persona_id: str, fixed: int, context: int) -> None:
        super().__init__(
            "Sorry, this persona cannot answer on this model right now. The bot's operator has been told."
        )
        self.operator_line = (
            f"persona {persona_id}: its system prompt and examples take {fixed} tokens, which leaves "
            f"no room for a message and a reply in the model's context of {context} tokens; shorten "
            f"the card's system_prompt or examples, or serve a model with a longer context"
        )


@dataclass(frozen=True)
class FittedPrompt:
    """A prompt rendered to fit ``context`` tokens with ``max_new_tokens`` of room for the reply.

    ``history_budget`` is the budget the history was rendered with; ``cut`` is True when the
    context, not the card, set it (or shortened the reply's room).
    """

    rendered: RenderedPrompt
    max_new_tokens: int
    history_budget: int
    context: int
    cut: bool

    def operator_line(self, persona_id: str, wanted_budget: int, wanted_reply: int) -> str:
        """The one warning an operator gets when the context cut this persona's history."""
        line = (
            f"persona {persona_id}: history_budget_tokens {wanted_budget} and max_new_tokens "
            f"{wanted_reply} do not fit the model's context of {self.context} tokens next to the "
            f"system prompt; history is cut to {self.history_budget} tokens per reply"
        )
        if self.max_new_tokens < wanted_reply:
            line += f" and replies to {self.max_new_tokens} tokens"
        return line + f". Set history_budget_tokens to at most {self.history_budget} in the card to match"


def fit_prompt(renderer: PromptRenderer, history: Sequence[Turn], context: int) -> FittedPrompt:
    """Render ``history`` so that its tokens plus the reply's room fit ``context`` tokens.

    Raises InputError for an empty history, ContextTooSmallError when the card's fixed text
    leaves no room at all. Token counts are the renderer's tokenizer facts (special tokens
    included, so the count is what the engine or server will see, or slightly more).
    """
    card = renderer.card
    facts = renderer.facts
    wanted_reply = card.generation.max_new_tokens
    reply = wanted_reply
    fixed = renderer.fixed_tokens() + facts.prompt_special_tokens
    room = context - fixed - reply
    if room < MIN_NEWEST_TOKENS:
        reply = context - fixed - MIN_NEWEST_TOKENS
        if reply < MIN_REPLY_TOKENS:  # min_new_tokens shrinks with it (with_reply_room)
            raise ContextTooSmallError(card.id, fixed, context)
        room = MIN_NEWEST_TOKENS
    budget = min(card.history_budget_tokens, room)
    for _ in range(MAX_PASSES):
        rendered = renderer.render_prompt(history, budget_tokens=budget)
        excess = facts.count_tokens(rendered.text) + facts.prompt_special_tokens + reply - context
        if excess <= 0:
            cut = budget < card.history_budget_tokens or reply < wanted_reply
            return FittedPrompt(rendered, reply, budget, context, cut)
        budget -= excess
        if budget < 1:
            break
    raise ContextTooSmallError(card.id, fixed, context)
