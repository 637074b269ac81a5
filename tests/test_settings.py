"""Settings from the environment: the Twilio REST credential and its checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bot.settings import Settings

ACCOUNT = "AC" + "1" * 32
KEY_SID = "SK" + "2" * 32


def settings(**values: str) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg, arg-type]


def test_rest_calls_use_the_api_key_when_it_is_set() -> None:
    """With TWILIO_API_KEY_SID/SECRET, REST Basic auth is the key; the token still verifies."""
    found = settings(
        twilio_account_sid=ACCOUNT,
        twilio_auth_token="token-value",
        twilio_api_key_sid=KEY_SID,
        twilio_api_key_secret="key-secret-value",
    )
    assert found.twilio_rest_auth() == (KEY_SID, "key-secret-value")
    assert "key-secret-value" in found.secrets()


def test_rest_calls_use_the_auth_token_without_a_key() -> None:
    """Without a key, REST Basic auth is the account SID and auth token; none without both."""
    found = settings(twilio_account_sid=ACCOUNT, twilio_auth_token="token-value")
    assert found.twilio_rest_auth() == (ACCOUNT, "token-value")
    assert settings(twilio_account_sid=ACCOUNT).twilio_rest_auth() is None


@pytest.mark.parametrize(
    "values",
    [{"twilio_api_key_sid": KEY_SID}, {"twilio_api_key_secret": "lonely-secret-value"}],
    ids=["sid-only", "secret-only"],
)
def test_half_an_api_key_is_a_config_error_naming_both_variables(
    values: dict[str, str],
) -> None:
    """One of TWILIO_API_KEY_SID/SECRET without the other stops the start, naming both and
    printing no secret value."""
    with pytest.raises(ValidationError) as raised:
        settings(twilio_auth_token="token-value", **values)
    text = str(raised.value)
    assert "TWILIO_API_KEY_SID" in text
    assert "TWILIO_API_KEY_SECRET" in text
    assert "lonely-secret-value" not in text
    assert "token-value" not in text
