"""REST routes discord.py needs to log in and look around: gateway, users, application, guild, channels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import UNKNOWN_GUILD, UNKNOWN_MEMBER, UNKNOWN_ROLE, ApiError, not_found
from .rest import ApiRequest, Reply, Router
from .state import P_VIEW_AUDIT_LOG

if TYPE_CHECKING:
    from .server import DiscordEmulator


class CoreRoutes:
    def __init__(self, emu: DiscordEmulator) -> None:
        self.emu = emu
        self.state = emu.state

    def register(self, r: Router) -> None:
        r.add("GET", "/gateway", self.get_gateway)
        r.add("GET", "/gateway/bot", self.get_gateway_bot)
        r.add("GET", "/users/@me", self.get_me)
        r.add("PATCH", "/users/@me", self.edit_me)
        r.add("POST", "/users/@me/channels", self.create_dm)
        r.add("GET", "/users/{user_id}", self.get_user)
        r.add("GET", "/oauth2/applications/@me", self.get_application)
        r.add("GET", "/applications/@me", self.get_application)
        r.add("GET", "/guilds/{guild_id}", self.get_guild)
        r.add("GET", "/guilds/{guild_id}/channels", self.get_guild_channels)
        r.add("GET", "/guilds/{guild_id}/roles", self.get_roles)
        r.add("GET", "/guilds/{guild_id}/members", self.list_members)
        r.add("GET", "/guilds/{guild_id}/members/search", self.search_members)
        r.add("GET", "/guilds/{guild_id}/members/{user_id}", self.get_member)
        r.add("PATCH", "/guilds/{guild_id}/members/{user_id}", self.edit_member)
        r.add("PUT", "/guilds/{guild_id}/members/{user_id}/roles/{role_id}", self.add_role)
        r.add("DELETE", "/guilds/{guild_id}/members/{user_id}/roles/{role_id}", self.remove_role)
        r.add("GET", "/channels/{channel_id}", self.get_channel)
        r.add("GET", "/guilds/{guild_id}/audit-logs", self.get_audit_log)
        r.add("DELETE", "/users/@me/guilds/{guild_id}", self.leave_guild)

    def _guild(self, guild_id: str) -> str:
        """The id of a guild the bot is in; Unknown Guild otherwise (as Discord answers a bot)."""
        if guild_id not in self.state.guilds or not self.state.is_member(self.state.application_id, guild_id):
            raise not_found(UNKNOWN_GUILD, "Guild")
        return guild_id

    def _member(self, guild_id: str, user_id: str) -> dict[str, Any]:
        member = self.state.members_of(guild_id).get(user_id)
        if member is None:
            raise not_found(UNKNOWN_MEMBER, "Member")
        return member

    async def get_gateway(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        return Reply(body={"url": f"{self.emu.ws_base}/gateway"})

    async def get_gateway_bot(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        return Reply(
            body={
                "url": f"{self.emu.ws_base}/gateway",
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        )

    async def get_me(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        user = self.state.user_payload(self.state.application_id)
        user.update({"verified": True, "mfa_enabled": False, "email": None, "locale": "ja"})
        return Reply(body=user)

    async def edit_me(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        user = self.state.users[self.state.application_id]
        if "username" in req.body():
            user["username"] = req.body()["username"]
        return await self.get_me(req, p)

    async def create_dm(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        recipient = self.state.resolve_user(req.body().get("recipient_id", ""))
        return Reply(body=self.state.channel_payload(self.state.dm_channel(recipient)))

    async def get_user(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        return Reply(body=self.state.user_payload(self.state.resolve_user(p["user_id"])))

    async def get_application(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        return Reply(body=self.state.application_payload())

    async def get_guild(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        guild_id = self._guild(p["guild_id"])
        body = self.state.guild_payload(guild_id)
        if req.query.get("with_counts") in ("true", "True", "1"):
            body["approximate_member_count"] = len(self.state.members_of(guild_id))
            body["approximate_presence_count"] = 0
        return Reply(body=body)

    async def get_guild_channels(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        return Reply(body=self.state.guild_channels(self._guild(p["guild_id"])))

    async def get_roles(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        return Reply(body=self.state.guild_roles(self._guild(p["guild_id"])))

    async def list_members(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        guild_id = self._guild(p["guild_id"])
        limit = min(int(req.query.get("limit", 1)), 1000)
        after = int(req.query.get("after", 0))
        members = self.state.members_of(guild_id)
        ids = sorted((uid for uid in members if int(uid) > after), key=int)[:limit]
        return Reply(body=[self.state.member_payload(uid, guild_id=guild_id) for uid in ids])

    async def search_members(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        guild_id = self._guild(p["guild_id"])
        query = req.query.get("query", "").lower()
        limit = int(req.query.get("limit", 1))
        found = []
        for uid, member in self.state.members_of(guild_id).items():
            user = self.state.users[uid]
            names = [user["username"], user.get("global_name") or "", member.get("nick") or ""]
            if any(n.lower().startswith(query) for n in names):
                found.append(self.state.member_payload(uid, guild_id=guild_id))
        return Reply(body=found[:limit])

    async def get_member(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        guild_id = self._guild(p["guild_id"])
        return Reply(body=self.state.member_payload(p["user_id"], guild_id=guild_id))

    def _member_updated(self, guild_id: str, user_id: str) -> dict[str, Any]:
        payload = self.state.member_payload(user_id, guild_id=guild_id)
        payload["guild_id"] = guild_id
        self.emu.gateway.dispatch("GUILD_MEMBER_UPDATE", payload)
        return self.state.member_payload(user_id, guild_id=guild_id)

    async def edit_member(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        guild_id = self._guild(p["guild_id"])
        member = self._member(guild_id, p["user_id"])
        body = req.body()
        if "nick" in body:
            member["nick"] = body["nick"]
        if "roles" in body:
            member["roles"] = [str(r) for r in body["roles"]]
        if "communication_disabled_until" in body:
            member["communication_disabled_until"] = body["communication_disabled_until"]
        return Reply(body=self._member_updated(guild_id, p["user_id"]))

    async def add_role(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        guild_id = self._guild(p["guild_id"])
        member = self._member(guild_id, p["user_id"])
        if p["role_id"] not in self.state.roles or self.state.role_guilds.get(p["role_id"]) != guild_id:
            raise not_found(UNKNOWN_ROLE, "Role")
        if p["role_id"] not in member["roles"]:
            member["roles"].append(p["role_id"])
        self._member_updated(guild_id, p["user_id"])
        return Reply(204)

    async def remove_role(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        guild_id = self._guild(p["guild_id"])
        member = self._member(guild_id, p["user_id"])
        if p["role_id"] in member["roles"]:
            member["roles"].remove(p["role_id"])
        self._member_updated(guild_id, p["user_id"])
        return Reply(204)

    async def get_audit_log(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        """The guild's audit log, newest first; ``action_type`` and ``limit`` filter as Discord's do."""
        guild_id = self._guild(p["guild_id"])
        if not self.state.member_permissions(self.state.application_id, guild_id) & P_VIEW_AUDIT_LOG:
            raise ApiError(403, 50013, "Missing Permissions")
        entries = list(reversed(self.state.audit_log.get(guild_id, [])))
        if req.query.get("action_type"):
            entries = [e for e in entries if str(e["action_type"]) == req.query["action_type"]]
        entries = entries[: min(int(req.query.get("limit", 50)), 100)]
        users = {e["user_id"] for e in entries} | {e["target_id"] for e in entries if e.get("target_id")}
        return Reply(
            body={
                "audit_log_entries": entries,
                "users": [self.state.user_payload(u) for u in sorted(users) if u in self.state.users],
                "integrations": [],
                "webhooks": [],
                "threads": [],
                "application_commands": [],
                "auto_moderation_rules": [],
                "guild_scheduled_events": [],
            }
        )

    async def leave_guild(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        """The bot leaves a guild: it is no member any more, and gets GUILD_DELETE."""
        guild_id = self._guild(p["guild_id"])
        self.state.members_of(guild_id).pop(self.state.application_id, None)
        self.emu.gateway.dispatch("GUILD_DELETE", {"id": guild_id}, guild_id=guild_id)
        return Reply(204)

    async def get_channel(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        return Reply(body=self.state.channel_payload(p["channel_id"]))
