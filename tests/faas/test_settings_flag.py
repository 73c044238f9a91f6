"""`require_attested_producers`: parsed from env/TOML/flags, and checked with the TLS settings."""

from __future__ import annotations

import pytest

from otrace.errors import ConfigError
from otrace.settings import Settings, load_settings


def test_flag_parses_from_the_environment() -> None:
    env = {
        "OTRACE_REQUIRE_ATTESTED_PRODUCERS": "true",
        "OTRACE_TLS_CERT": "c.pem",
        "OTRACE_TLS_KEY": "k.pem",
    }
    assert load_settings({}, env).require_attested_producers is True
    env["OTRACE_REQUIRE_ATTESTED_PRODUCERS"] = "0"
    assert load_settings({}, env).require_attested_producers is False
    env["OTRACE_REQUIRE_ATTESTED_PRODUCERS"] = "maybe"
    with pytest.raises(ConfigError, match="true or false"):
        load_settings({}, env)


def test_flag_needs_tls_and_owns_the_client_ca() -> None:
    with pytest.raises(ConfigError, match="needs tls_cert"):
        Settings(require_attested_producers=True)
    with pytest.raises(ConfigError, match="do not set tls_client_ca"):
        Settings(require_attested_producers=True, tls_cert="c", tls_key="k", tls_client_ca="ca.pem")
