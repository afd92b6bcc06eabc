"""Payloads for what a *human* does: post a message, run a slash command, click, submit a modal.

Kept apart from the server so the shapes that discord.py parses (interaction
``data``, ``resolved`` maps, modal component trees) can be read in one place.
Every builder checks the request makes sense against the emulator's state (the
command was synced, the button exists and is enabled, required options are
given) because a test that clicks a button the bot never sent should fail
loudly, not silently dispatch something Discord could never send.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from .messages import MessageFactory
from .state import P_ALL, EmulatorState, InteractionRecord, StoredMessage

OPT_SUB_COMMAND = 1
OPT_SUB_COMMAND_GROUP = 2
OPT_USER = 6
OPT_CHANNEL = 7
OPT_ROLE = 8
OPT_MENTIONABLE = 9
OPT_ATTACHMENT = 11
INTERACTION_PING = 1
INTERACTION_APPLICATION_COMMAND = 2
INTERACTION_MESSAGE_COMPONENT = 3
INTERACTION_MODAL_SUBMIT = 5
_SELECT_TYPES = {3, 5, 6, 7, 8}


class HookBuilder:
    def __init__(self, state: EmulatorState, factory: MessageFactory) -> None:
        self.state = state
        self.factory = factory

    # -------------------------------------------------------------- messages
    def user_message(
        self,
        channel_id: str,
        author_id: str,
        content: str,
        *,
        mentions: list[Any] | None,
        mention_roles: list[Any] | None,
        mention_everyone: bool | None,
        attachments: list[dict[str, Any]] | None,
        message_reference: Any,
        embeds: list[dict[str, Any]] | None,
        message_type: int | None = None,
        extras: dict[str, Any] | None = None,
    ) -> StoredMessage:
        """A message typed by a person: content mentions are parsed, explicit ones added.

        ``message_type`` makes it a system message Discord creates on the member's behalf (18 a
        thread created, its content the thread's name; 6 a pin, referencing the pinned message …).
        ``extras`` are :meth:`what_else` parts (a forward, a poll, stickers, a voice message …).
        """
        parsed_users, parsed_roles, parsed_everyone = self.factory.mentions_for_bot_message(
            content, None, None
        )
        users = parsed_users + [self.state.resolve_user(u) for u in mentions or []]
        roles = parsed_roles + [self.state.resolve_role(r) for r in mention_roles or []]
        ref_spec = None
        if message_reference is not None:
            if isinstance(message_reference, dict):
                mid = message_reference.get("message_id") or message_reference.get("id")
            else:
                mid = message_reference
            ref_spec = {"message_id": str(mid), "channel_id": channel_id}
        reference, referenced = self.factory.reference(channel_id, ref_spec)
        replied = str(referenced.payload["author"]["id"]) if referenced is not None else None
        # A reply mentions a user it replies to (a webhook is no user); a pin notice mentions nobody.
        if replied is not None and message_type is None and replied in self.state.users:
            users.append(replied)
        payload = self.factory.build(
            channel_id=channel_id,
            author=self.state.user_payload(author_id),
            content=content,
            embeds=embeds,
            attachments=[self.factory.hook_attachment(channel_id, a) for a in attachments or []],
            mentions=list(dict.fromkeys(users)),
            mention_roles=list(dict.fromkeys(roles)),
            mention_everyone=parsed_everyone if mention_everyone is None else mention_everyone,
            reference=reference,
            referenced=referenced,
            msg_type=message_type,
        )
        payload.update(extras or {})
        msg = StoredMessage(payload=payload, source="user")
        self.state.messages[msg.id] = msg
        return msg

    def what_else(
        self,
        channel_id: str,
        *,
        forward_of: Any = None,
        poll: dict[str, Any] | None = None,
        sticker_names: list[str] | None = None,
        voice_message: bool = False,
        activity: bool = False,
    ) -> dict[str, Any]:
        """Payload fields of a member's message beyond its text, as Discord sends them.

        ``forward_of`` (a message id): a forward, with ``message_reference.type`` 1 and the
        original in ``message_snapshots`` (no ``referenced_message``); ``poll``: ``{"question",
        "answers": [...]}``; ``voice_message``: flag 8192 and an audio attachment.
        """
        extras: dict[str, Any] = {}
        flags = 0
        if forward_of is not None:
            original = self.state.messages[str(forward_of)].payload
            extras["message_reference"] = {
                "type": 1,
                "message_id": original["id"],
                "channel_id": original["channel_id"],
                "guild_id": self.state.guild_id,
            }
            snapshot = {
                key: original.get(key)
                for key in (
                    "type",
                    "content",
                    "embeds",
                    "attachments",
                    "timestamp",
                    "edited_timestamp",
                    "flags",
                    "mentions",
                    "mention_roles",
                    "components",
                )
            }
            extras["message_snapshots"] = [{"message": snapshot}]
            flags |= 1 << 14  # HAS_SNAPSHOT
        if poll is not None:
            extras["poll"] = {
                "question": {"text": poll["question"]},
                "answers": [
                    {"answer_id": i, "poll_media": {"text": text}}
                    for i, text in enumerate(poll["answers"], 1)
                ],
                "expiry": "2099-01-01T00:00:00+00:00",
                "allow_multiselect": False,
                "layout_type": 1,
            }
        if sticker_names:
            extras["sticker_items"] = [
                {"id": self.state.ids.next(), "name": name, "format_type": 1} for name in sticker_names
            ]
        if voice_message:
            flags |= 1 << 13  # IS_VOICE_MESSAGE
            extras["attachments"] = [
                {
                    **self.factory.hook_attachment(
                        channel_id,
                        {"filename": "voice-message.ogg", "content": b"OggS", "content_type": "audio/ogg"},
                    ),
                    "duration_secs": 2.5,
                    "waveform": "AAAA",
                }
            ]
        if activity:
            extras["activity"] = {"type": 1, "party_id": "spotify:1"}
        if flags:
            extras["flags"] = flags
        return extras

    # ---------------------------------------------------------- interactions
    def interaction(
        self,
        itype: int,
        channel_id: str,
        user_id: str,
        data: dict[str, Any],
        *,
        message: StoredMessage | None = None,
    ) -> tuple[InteractionRecord, dict[str, Any]]:
        state = self.state
        record = InteractionRecord(
            id=state.ids.next(),
            token="emu." + secrets.token_urlsafe(48),
            type=itype,
            channel_id=channel_id,
            user_id=user_id,
            data=data,
            created_at=time.time(),
            message_id=message.id if message else None,
        )
        state.interactions[record.id] = record
        payload: dict[str, Any] = {
            "id": record.id,
            "application_id": state.application_id,
            "type": itype,
            "data": data,
            "channel_id": channel_id,
            "channel": state.channel_payload(channel_id),
            "token": record.token,
            "version": 1,
            "app_permissions": str(P_ALL),
            "locale": "ja",
            "entitlements": [],
            "entitlement_sku_ids": [],
            "attachment_size_limit": 10 * 1024 * 1024,
        }
        guild_id = state.guild_of(channel_id)
        if guild_id is not None:
            payload.update(
                {
                    "guild_id": guild_id,
                    "guild": {"id": guild_id, "locale": "ja", "features": []},
                    "guild_locale": "ja",
                    "member": state.member_payload(user_id, with_permissions=True, guild_id=guild_id),
                    "authorizing_integration_owners": {"0": guild_id},
                    "context": 0,
                }
            )
        else:
            payload.update({"user": state.user_payload(user_id), "context": 1})
        if message is not None:
            payload["message"] = message.payload
        return record, payload

    def find_command(self, name: str, guild_id: str | None = None) -> dict[str, Any]:
        """The synced command ``name`` as a member of ``guild_id`` (default: the primary guild) sees it."""
        root = name.split()[0]
        for scope in (guild_id or self.state.guild_id, "global"):
            for cmd in self.state.commands.get(scope, []):
                if cmd["name"] == root and int(cmd.get("type", 1)) == 1:
                    return cmd
        synced = sorted(c["name"] for cmds in self.state.commands.values() for c in cmds)
        raise LookupError(f"no synced slash command {root!r}; synced: {synced}")

    def command_data(
        self, name: str, options: dict[str, Any] | None, guild_id: str | None = None
    ) -> dict[str, Any]:
        """``data`` for a CHAT_INPUT interaction in ``guild_id`` (default: the primary guild);
        ``name`` may be ``"group sub"`` style."""
        guild_id = guild_id or self.state.guild_id
        cmd = self.find_command(name, guild_id)
        parts = name.split()
        resolved: dict[str, dict[str, Any]] = {}
        defs: list[dict[str, Any]] = cmd.get("options") or []
        chain: list[dict[str, Any]] = []
        for part in parts[1:]:
            sub = next((o for o in defs if o["name"] == part and o["type"] in (1, 2)), None)
            if sub is None:
                raise LookupError(f"command {cmd['name']!r} has no subcommand {part!r}")
            chain.append(sub)
            defs = sub.get("options") or []
        leaf = self._options(defs, options or {}, resolved, guild_id)
        for sub in reversed(chain):
            leaf = [{"type": sub["type"], "name": sub["name"], "options": leaf}]
        data: dict[str, Any] = {"id": cmd["id"], "name": cmd["name"], "type": 1, "options": leaf}
        if "guild_id" in cmd:
            data["guild_id"] = cmd["guild_id"]
        if resolved:
            data["resolved"] = resolved
        return data

    def _options(
        self,
        defs: list[dict[str, Any]],
        given: dict[str, Any],
        resolved: dict[str, dict[str, Any]],
        guild_id: str,
    ) -> list[dict[str, Any]]:
        by_name = {d["name"]: d for d in defs}
        for name in given:
            if name not in by_name:
                raise LookupError(f"unknown option {name!r}; the command has {sorted(by_name)}")
        missing = [d["name"] for d in defs if d.get("required") and d["name"] not in given]
        if missing:
            raise ValueError(f"required options missing: {missing}")
        out = []
        for name, value in given.items():
            otype = int(by_name[name]["type"])
            value = self._option_value(otype, value, resolved, guild_id)
            out.append({"name": name, "type": otype, "value": value})
        return out

    def _option_value(
        self, otype: int, value: Any, resolved: dict[str, dict[str, Any]], guild_id: str
    ) -> Any:
        state = self.state
        if otype == OPT_USER or (otype == OPT_MENTIONABLE and str(value) not in state.roles):
            uid = state.resolve_user(value)
            resolved.setdefault("users", {})[uid] = state.user_payload(uid)
            if state.is_member(uid, guild_id):
                member = state.member_payload(uid, with_user=False, with_permissions=True, guild_id=guild_id)
                resolved.setdefault("members", {})[uid] = member
            return uid
        if otype in (OPT_ROLE, OPT_MENTIONABLE):
            rid = state.resolve_role(value)
            resolved.setdefault("roles", {})[rid] = dict(state.roles[rid])
            return rid
        if otype == OPT_CHANNEL:
            cid = state.resolve_channel(value)
            channel = state.channel_payload(cid)
            channel["permissions"] = str(P_ALL)
            resolved.setdefault("channels", {})[cid] = channel
            return cid
        if otype == OPT_ATTACHMENT:
            att = self.factory.hook_attachment(
                "0", value if isinstance(value, dict) else {"filename": str(value)}
            )
            resolved.setdefault("attachments", {})[att["id"]] = att
            return att["id"]
        return value

    def component_data(
        self, message: StoredMessage, custom_id: str, values: list[str] | None
    ) -> dict[str, Any]:
        component = _find_component(message.payload.get("components") or [], custom_id)
        if component is None:
            raise LookupError(f"message {message.id} has no component with custom_id {custom_id!r}")
        if component.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled")
        ctype = int(component["type"])
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": ctype}
        if ctype in _SELECT_TYPES:
            data["values"] = list(values or [])
        elif values is not None:
            raise ValueError(f"component {custom_id!r} is a button; it takes no values")
        return data

    def modal_components(self, modal: dict[str, Any] | None, values: dict[str, Any]) -> list[dict[str, Any]]:
        """Submitted components mirroring the modal the bot opened (action rows or labels)."""
        if modal is None:
            return [
                {"type": 1, "components": [_submitted({"type": 4, "custom_id": cid}, values)]}
                for cid in values
            ]
        out: list[dict[str, Any]] = []
        for top in modal.get("components") or []:
            if top.get("type") == 1:
                out.append(
                    {"type": 1, "components": [_submitted(c, values) for c in top.get("components") or []]}
                )
            elif top.get("type") == 18:
                out.append(
                    {"type": 18, "id": top.get("id", 0), "component": _submitted(top["component"], values)}
                )
        return out


def _submitted(component: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    cid = component.get("custom_id")
    ctype = int(component.get("type", 4))
    value = values.get(cid) if cid else None
    if ctype == 4:
        if value is None and component.get("required", True):
            raise ValueError(f"modal text input {cid!r} is required")
        return {"type": 4, "custom_id": cid, "value": "" if value is None else str(value)}
    if ctype in _SELECT_TYPES:
        return {"type": ctype, "custom_id": cid, "values": list(value or [])}
    return {"type": ctype, "custom_id": cid}


def _find_component(components: list[dict[str, Any]], custom_id: str) -> dict[str, Any] | None:
    for comp in components:
        if comp.get("custom_id") == custom_id:
            return comp
        for key in ("components", "accessory", "component"):
            child = comp.get(key)
            children = child if isinstance(child, list) else [child] if isinstance(child, dict) else []
            found = _find_component(children, custom_id)
            if found is not None:
                return found
    return None
