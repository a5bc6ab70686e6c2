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
    parse_model_prices,
    parse_wei,
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


def settings(**options: object) -> NodeSettings:
    return NodeSettings(
        rpc_urls=("http://x",),
        contract="0x" + "11" * 20,
        private_key="k",
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("given", "wei"),
    [("1000000000", 10**9), ("1e9", 10**9), ("2.5e12", 2_500_000_000_000), ("1_000", 1000),
     (0, 0), (10**9, 10**9), (1e9, 10**9)],
)  # fmt: skip
def test_wei_amounts_parse_as_whole_numbers(given: str | int | float, wei: int) -> None:
    assert parse_wei(given, what="--price-per-token-wei") == wei


@pytest.mark.parametrize(
    ("given", "why"),
    [("1.5", "is not a whole number of wei"), ("gwei", "is not an amount of wei"),
     ("-1", "must not be negative"), ("nan", "is not a whole number of wei")],
)  # fmt: skip
def test_a_price_that_is_not_an_amount_of_wei_is_refused(given: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_wei(given, what="--price-per-token-wei")


def test_model_prices_are_model_equals_wei() -> None:
    assert parse_model_prices(["SmolLM2-135M-Instruct-Q4_1=2e9", " gemma = 30 "]) == (
        ("SmolLM2-135M-Instruct-Q4_1", 2 * 10**9),
        ("gemma", 30),
    )
    with pytest.raises(ConfigError, match="is not MODEL=WEI"):
        parse_model_prices(["2e9"])


def test_every_served_model_has_a_price_small_but_not_zero_by_default() -> None:
    node = settings(models=("SmolLM2-135M-Instruct-Q4_1", "gemma-3-270m-Q4_K_M"),
                    model_prices=(("gemma-3-270m-Q4_K_M", 3 * 10**9),))  # fmt: skip
    assert node.price_of("SmolLM2-135M-Instruct-Q4_1") == 10**9
    assert node.price_of("gemma-3-270m-Q4_K_M") == 3 * 10**9
    # the coordinator's minimum fee per seat buys up to 1,000 tokens at the default price
    assert 10**12 // node.price_of("SmolLM2-135M-Instruct-Q4_1") == 1000


def test_a_price_for_a_model_not_served_names_the_nearest_served_one() -> None:
    with pytest.raises(
        ConfigError,
        match=r"'SmolLM2-135M', which this node does not serve.*did you mean 'SmolLM2-135M-Ins",
    ):
        settings(model_prices=(("SmolLM2-135M", 10**9),))
    with pytest.raises(ConfigError, match="two prices"):
        settings(
            model_prices=(("SmolLM2-135M-Instruct-Q4_1", 1), ("SmolLM2-135M-Instruct-Q4_1", 2))
        )
    with pytest.raises(ConfigError, match="must not be negative"):
        settings(price_per_token_wei=-1)


def test_the_commit_window_is_an_hour_by_default_and_must_be_positive() -> None:
    assert settings().max_commit_window_s == 3600
    with pytest.raises(ConfigError, match="max_commit_window_s must be positive, not 0"):
        settings(max_commit_window_s=0)
