"""The operator console: pages over the deployment's Redis on a listener of its own, behind a
sign-in token, CSRF-checked actions, masked ids and hidden message text (DESIGN §3, §4)."""

from bot.console.app import ConsoleSetupError, make_console_app
from bot.console.auth import console_problems, console_token, is_loopback, sign_in_url
from bot.console.beacon import ProcessBeacon, processes
from bot.console.parts import ConsoleParts

__all__ = [
    "ConsoleParts",
    "ConsoleSetupError",
    "ProcessBeacon",
    "console_problems",
    "console_token",
    "is_loopback",
    "make_console_app",
    "processes",
    "sign_in_url",
]
