"""`bot telegram set-webhook|delete-webhook|info`: the Telegram bot's webhook."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import aiohttp

from bot.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from bot.commands import command_menu
from bot.config import Config
from bot.errors import ChannelSendError
from bot.logs import Logger, make_logger
from bot.settings import Settings
from channels.telegram import ALLOWED_UPDATES, TelegramChannel


async def telegram_admin(settings: Settings, config: Config, action: str) -> int:
    """`bot telegram set-webhook|delete-webhook|info` against the Bot API."""
    if settings.telegram_bot_token is None:
        print("bot: TELEGRAM_BOT_TOKEN is not set (BotFather gives it)", file=sys.stderr)
        return EXIT_CONFIG
    log = make_logger(level="warning", stream=sys.stderr, secrets=settings.secrets())
    async with aiohttp.ClientSession() as http:
        telegram = TelegramChannel(
            settings=settings, config=config.channels.telegram, http=http, log=log, attempts=2
        )
        try:
            if action == "set-webhook":
                code = await set_webhook(settings, telegram)
                if code == EXIT_OK:
                    await publish_command_menu(telegram, config.commands.admins, log)
                return code
            if action == "delete-webhook":
                await telegram.call("deleteWebhook", drop_pending_updates=False)
                print("webhook deleted: updates now wait for polling (channels.telegram.mode)")
                return EXIT_OK
            me = await telegram.bot_user()
            hook = await telegram.call("getWebhookInfo")
        except ChannelSendError as exc:
            print(f"bot: {exc}", file=sys.stderr)
            return EXIT_FAILED
    print(f"bot: @{me.get('username')} (id {me.get('id')}, {me.get('first_name')})")
    print(
        f"groups: can join {me.get('can_join_groups')}, "
        f"reads all messages {me.get('can_read_all_group_messages')} (privacy mode off)"
    )
    print(
        f"webhook: {hook.get('url') or '(none: polling)'}; "
        f"pending updates {hook.get('pending_update_count', 0)}"
    )
    if hook.get("last_error_message"):
        print(f"last webhook error: {hook['last_error_message']}")
    return EXIT_OK


async def set_webhook(settings: Settings, telegram: TelegramChannel) -> int:
    if not settings.bot_public_url or not settings.telegram_webhook_secret:
        print(
            "bot: set BOT_PUBLIC_URL (the https URL Telegram calls) and TELEGRAM_WEBHOOK_SECRET",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    url = f"{settings.bot_public_url.rstrip('/')}/webhooks/telegram"
    await telegram.call(
        "setWebhook",
        url=url,
        secret_token=settings.telegram_webhook_secret.get_secret_value(),
        allowed_updates=ALLOWED_UPDATES,
    )
    print(f"webhook set: {url}")
    return EXIT_OK


async def publish_command_menu(
    telegram: TelegramChannel, admins: Sequence[str], log: Logger
) -> None:
    """Telegram's `/` menu (setMyCommands): everyone's commands in the default scope, and in
    each `telegram:<id>` admin's chat the admin ones too. Best-effort: a failure is logged."""
    menus: list[tuple[dict[str, str | int], list[dict[str, str]]]] = [
        ({"type": "default"}, command_menu(admin=False))
    ]
    for admin in admins:
        chat = admin.removeprefix("telegram:")
        if admin.startswith("telegram:") and chat.lstrip("-").isdigit():
            menus.append(({"type": "chat", "chat_id": int(chat)}, command_menu(admin=True)))
    for scope, commands in menus:
        try:
            await telegram.call("setMyCommands", commands=commands, scope=scope)
        except ChannelSendError as exc:
            log.warning(
                "setup_warning",
                channel="telegram",
                error=f"setMyCommands failed ({exc}): the / menu may be out of date",
            )
            return
