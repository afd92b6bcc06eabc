"""A second Discord server beside the emulator's seed one, for the tests of settings per server.

Server A is the seed guild ("main": channels "general", "chat", "review"; "moderator" owns it and
moderates; "member" and "member2" talk). Server B ("second") has its own channels ("b-general",
its system channel, "b-chat", "b-review"), an owner ("admin_b"), a second admin by role
("admin2_b"), a moderator by role ("mod_b"), and two members from A: "member" (the same person
talks in both) and "moderator" (A's moderator is a plain member of B).
"""

from __future__ import annotations

from tests.discord_emulator import DiscordEmulator
from tests.discord_emulator.state import MODERATOR_PERMISSIONS, P_MANAGE_GUILD

SECOND = "second"


def second_server(emu: DiscordEmulator) -> None:
    state = emu.state
    state.add_user("admin_b", None, "kiyoshi_b", global_name="清")
    state.add_user("admin2_b", None, "sachiko_b", global_name="幸子")
    state.add_user("mod_b", None, "makoto_b", global_name="誠")
    guild = state.add_guild(SECOND, None, "Second Server", owner="admin_b")
    state.add_role("b-moderator", None, "Mods B", MODERATOR_PERMISSIONS, position=2, guild=SECOND)
    state.add_role(
        "b-admin", None, "Admins B", MODERATOR_PERMISSIONS | P_MANAGE_GUILD, position=3, guild=SECOND
    )
    state.add_channel("b-general", None, "b-general", position=0, guild=SECOND)
    state.add_channel("b-chat", None, "b-chat", position=1, guild=SECOND)
    state.add_channel("b-review", None, "b-review", position=2, guild=SECOND)
    guild["system_channel_id"] = state.channel_keys["b-general"]
    state.add_member(state.user_keys["admin_b"], guild=SECOND)
    state.add_member(state.user_keys["admin2_b"], roles=["b-admin"], guild=SECOND)
    state.add_member(state.user_keys["mod_b"], roles=["b-moderator"], guild=SECOND)
    state.add_member(state.user_keys["member"], guild=SECOND)
    state.add_member(state.user_keys["moderator"], guild=SECOND)
