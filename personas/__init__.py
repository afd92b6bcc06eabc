"""Persona cards and the one prompt renderer shared by the bot and the trainer."""

from personas.card import CardError, CardSet, GenerationParams, PersonaCard, UnknownPersonaError, load_cards
from personas.render import InputError, PromptRenderer, RenderedPrompt, Segment, TokenizerFacts, Turn

__all__ = [
    "CardError",
    "CardSet",
    "GenerationParams",
    "InputError",
    "PersonaCard",
    "PromptRenderer",
    "RenderedPrompt",
    "Segment",
    "TokenizerFacts",
    "Turn",
    "UnknownPersonaError",
    "load_cards",
]
