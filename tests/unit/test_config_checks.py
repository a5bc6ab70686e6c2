"""Configuration mistakes are refused with the key at fault and what was probably meant."""

from __future__ import annotations

from pathlib import Path

import pytest

from oracle.config import (
    ConfigError,
    NodeSettings,
    check_known_keys,
    check_private_key,
    load_config_file,
    unknown_environment,
)

KNOWN = ("rpc", "contract", "llm_threads", "http_host", "retention_days")


def test_an_unknown_config_key_names_the_nearest_known_one(tmp_path: Path) -> None:
    config = tmp_path / "oracle.toml"
    config.write_text('[node]\nrpc = "http://x"\nllm-thread = 2\n')
    with pytest.raises(ConfigError, match=r"unknown key 'llm_thread'; did you mean 'llm_threads'"):
        check_known_keys(load_config_file(config), KNOWN, where=f"config file {config}")


def test_an_unknown_key_far_from_any_gets_no_guess() -> None:
    with pytest.raises(ConfigError) as caught:
        check_known_keys(["zzzzqqq"], KNOWN, where="config")
    assert "unknown key 'zzzzqqq'" in str(caught.value)
    assert "did you mean" not in str(caught.value)


def test_known_keys_pass() -> None:
    check_known_keys(["rpc", "llm_threads"], KNOWN, where="config")


def test_an_unknown_oracle_run_variable_is_an_error() -> None:
    environ = {"ORACLE_RUN_RETENTION_DAY": "3", "ORACLE_RPC": "x", "PATH": "/bin"}
    with pytest.raises(ConfigError, match=r"ORACLE_RUN_RETENTION_DAY .*ORACLE_RUN_RETENTION_DAYS"):
        unknown_environment(environ, "ORACLE_RUN_", KNOWN)
    unknown_environment({"ORACLE_RUN_HTTP_HOST": "::1"}, "ORACLE_RUN_", KNOWN)


@pytest.mark.parametrize("key", ["0x1234", "zz" * 32, "0x" + "ab" * 33, "", "0x" + "00" * 32])
def test_a_malformed_private_key_is_refused_without_echoing_it(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_private_key(key, source="ORACLE_PRIVATE_KEY")
    assert "ORACLE_PRIVATE_KEY is not a private key" in str(caught.value)
    if len(key) > 4:
        assert key[2:] not in str(caught.value)


def test_a_private_key_gets_its_0x() -> None:
    assert check_private_key("ab" * 32, source="k") == "0x" + "ab" * 32
    assert check_private_key(" 0x" + "AB" * 32 + "\n", source="k") == "0x" + "AB" * 32


def test_a_contract_that_is_not_an_address_is_refused() -> None:
    with pytest.raises(ConfigError, match="is not an address"):
        NodeSettings(rpc_urls=("http://x",), contract="0x1234", private_key="0x" + "11" * 32)


def test_http_endpoints_listen_on_loopback_by_default() -> None:
    settings = NodeSettings(rpc_urls=("http://x",), contract="0x" + "11" * 20, private_key="k")
    assert settings.http_host == "127.0.0.1"
    assert settings.retention_days > 0
