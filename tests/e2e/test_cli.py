"""The `oracle` command as an operator meets it: config sources, refusals, clean stops."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from eth_account import Account
from sqlalchemy import text

from oracle.chain.anvil import Anvil, dev_private_key
from oracle.chain.deploy import deploy_contract
from oracle.store import head_revision, make_engine

KEY = dev_private_key(7)


def oracle(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oracle.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def refusal(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The one sentence a refused command ends with; no traceback, no key anywhere."""
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "Traceback" not in output
    assert KEY[2:] not in output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    return last


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def coordinator_on(chain: Anvil) -> str:
    sender = chain.w3.eth.accounts[0]
    return deploy_contract(chain.w3, "InferenceCoordinator", 20, 3, sender=sender)


def run_against(
    rpc: str, contract: str, database_url: str, *args: str, key: str = KEY, **env: str
) -> subprocess.CompletedProcess[str]:
    return oracle(
        "run", "--rpc", rpc, "--contract", contract, "--rpc-wait-s", "1", *args,
        env={"ORACLE_PRIVATE_KEY": key, "ORACLE_DATABASE_URL": database_url, **env},
    )  # fmt: skip


def test_an_rpc_that_does_not_answer_ends_in_one_sentence_naming_it(database_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_against(dead, "0x" + "11" * 20, database_url)
    assert refusal(result, 1).startswith(
        f"error: The chain's RPC endpoint does not answer: {dead} gave no chain id in 1 s"
    )
    assert "RPC endpoint does not answer; retrying" in result.stderr  # logged while waiting


def test_an_account_address_is_not_a_coordinator(chain: Anvil, database_url: str) -> None:
    account = chain.w3.eth.accounts[5]
    result = run_against(chain.url, account, database_url)
    assert refusal(result, 1) == (
        "error: The contract address holds no InferenceCoordinator of this version: "
        f"{account} holds no code (an account, not a contract); check --contract"
    )


def test_another_contract_is_not_a_coordinator(chain: Anvil, database_url: str) -> None:
    sender = chain.w3.eth.accounts[0]
    consumer = deploy_contract(chain.w3, "ExampleConsumer", coordinator_on(chain), sender=sender)
    result = run_against(chain.url, consumer, database_url)
    sentence = refusal(result, 1)
    assert f"{consumer} holds a contract without the coordinator's" in sentence
    assert sentence.endswith("check --contract")


@pytest.mark.parametrize("key", ["0x1234", "not a key", "0x" + "ab" * 31 + "zz"])
def test_a_malformed_private_key_ends_in_one_sentence(database_url: str, key: str) -> None:
    result = run_against("http://127.0.0.1:9", "0x" + "11" * 20, database_url, key=key)
    assert "is not a private key: expected 64 hex digits" in refusal(result, 2)
    assert key not in result.stderr


def test_keystore_mistakes_end_in_one_sentence(database_url: str, tmp_path: Path) -> None:
    keystore = tmp_path / "key.json"
    keystore.write_text(json.dumps(Account.encrypt(KEY, "right", kdf="pbkdf2", iterations=1000)))
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    cases = {
        str(tmp_path / "missing.json"): "cannot be read: No such file or directory",
        str(keystore): "cannot be decrypted: wrong ORACLE_KEYSTORE_PASSWORD?",
        str(junk): "is not a JSON keystore file",
    }
    for path, sentence in cases.items():
        result = run_against(
            "http://127.0.0.1:9", "0x" + "11" * 20, database_url, "--keystore", path,
            key="", ORACLE_KEYSTORE_PASSWORD="wrong",
        )  # fmt: skip
        assert refusal(result, 2) == f"error: keystore {path} {sentence}"


def bind(database_url: str, chain_id: int, coordinator: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO node_binding (chain_id, coordinator) VALUES (:c, :a)"),
                {"c": chain_id, "a": coordinator.lower()},
            )
    finally:
        engine.dispose()


def test_a_database_of_another_chain_is_refused(chain: Anvil, database_url: str) -> None:
    coordinator = coordinator_on(chain)
    bind(database_url, 1, coordinator)
    sentence = refusal(run_against(chain.url, coordinator, database_url), 1)
    assert sentence.startswith(
        "error: The node's database belongs to another chain or contract: database "
    )
    assert f"holds chain 1, coordinator {coordinator.lower()}; " in sentence
    assert f"asked for chain 31337, coordinator {coordinator.lower()}" in sentence
    assert "***" in sentence or "@" not in sentence  # the URL without its password


def test_a_database_of_another_coordinator_is_refused(chain: Anvil, database_url: str) -> None:
    first, second = coordinator_on(chain), coordinator_on(chain)
    bind(database_url, 31337, first)
    sentence = refusal(run_against(chain.url, second, database_url), 1)
    assert f"holds chain 31337, coordinator {first.lower()}; " in sentence
    assert f"asked for chain 31337, coordinator {second.lower()}" in sentence


def test_unknown_config_keys_and_variables_are_errors(tmp_path: Path) -> None:
    config = tmp_path / "oracle.toml"
    config.write_text('[node]\nrpc = "http://127.0.0.1:9"\nconfirmation = 3\n')
    result = oracle("run", "--config", str(config), env={"ORACLE_PRIVATE_KEY": KEY})
    assert refusal(result, 2) == (
        f"error: config file {config}: unknown key 'confirmation'; did you mean 'confirmations'?"
    )
    result = oracle(
        "run", "--rpc", "http://127.0.0.1:9", "--contract", "0x" + "11" * 20,
        env={"ORACLE_PRIVATE_KEY": KEY, "ORACLE_RUN_RETENTION_DAY": "3"},
    )  # fmt: skip
    assert refusal(result, 2) == (
        "error: environment variable ORACLE_RUN_RETENTION_DAY names no option; "
        "did you mean 'ORACLE_RUN_RETENTION_DAYS'?"
    )


def test_a_price_for_a_model_the_node_does_not_serve_ends_in_one_sentence(
    tmp_path: Path,
) -> None:
    config = tmp_path / "oracle.toml"
    config.write_text(
        '[node]\nrpc = "http://127.0.0.1:9"\n'
        'contract = "0x000000000000000000000000000000000000dEaD"\n'
        '[node.model-price]\n"SmolLM2-135M" = 2000000000\n'
    )
    result = oracle("run", "--config", str(config), env={"ORACLE_PRIVATE_KEY": KEY})
    assert refusal(result, 2) == (
        "error: --model-price names 'SmolLM2-135M', which this node does not serve (--model); "
        "did you mean 'SmolLM2-135M-Instruct-Q4_1'?"
    )


def test_old_schema_with_no_migrate_is_refused_with_the_fix(
    empty_database_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "oracle.toml"
    config.write_text(
        '[node]\nrpc = "http://127.0.0.1:9"\n'
        'contract = "0x000000000000000000000000000000000000dEaD"\n'
    )
    result = oracle(
        "run", "--config", str(config), "--no-migrate",
        env={"ORACLE_PRIVATE_KEY": KEY, "ORACLE_DATABASE_URL": empty_database_url},
    )  # fmt: skip
    assert result.returncode == 1
    assert "database schema is older" in result.stderr
    assert "oracle db upgrade" in result.stderr
    assert KEY[2:] not in result.stdout + result.stderr


def test_a_missing_key_is_a_usage_error() -> None:
    result = oracle("run", "--rpc", "http://127.0.0.1:9", "--contract", "0x" + "11" * 20,
                    env={"ORACLE_PRIVATE_KEY": ""})  # fmt: skip
    assert "ORACLE_PRIVATE_KEY" in refusal(result, 2)


def test_db_upgrade_then_status(empty_database_url: str) -> None:
    upgraded = oracle("db", "upgrade", "--database-url", empty_database_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"schema at {head_revision()}" in upgraded.stdout
    status = oracle("status", "--database-url", empty_database_url)
    assert status.returncode == 0 and "phase" in status.stdout


def test_status_prints_a_requesters_text_escaped(database_url: str) -> None:
    from oracle.store import make_session_factory
    from tests.integration.test_store_models import make_request

    engine = make_engine(database_url)
    try:
        with make_session_factory(engine).begin() as session:
            session.add(make_request(id=9, phase="skipped", skip_reason="\x1b]0;pwned\x07\u202eok"))
    finally:
        engine.dispose()
    result = oracle("status", "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert "\\x1b]0;pwned\\x07\\u202eok" in result.stdout


def test_models_lists_the_shipped_models() -> None:
    result = oracle("models")
    assert result.returncode == 0
    for name in ("SmolLM2-135M-Instruct-Q4_1", "gemma-3-270m-Q4_K_M", "all-MiniLM-L6-v2"):
        assert f"{name}" in result.stdout
    assert "MISSING" not in result.stdout


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_node_stops_cleanly_on_sigterm(chain: Anvil, database_url: str, tmp_path: Path) -> None:
    """...after saying ready on /healthz, with workers that never saw its key."""
    coordinator = coordinator_on(chain)
    port = free_port()
    log = tmp_path / "node.log"
    with log.open("w") as out:
        node = subprocess.Popen(
            [sys.executable, "-m", "oracle.cli", "run", "--rpc", chain.url,
             "--contract", coordinator, "--llm-threads", "1", "--http-port", str(port)],
            env={**os.environ, "ORACLE_PRIVATE_KEY": KEY, "ORACLE_DATABASE_URL": database_url},
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while "serving requests" not in log.read_text() and time.monotonic() < deadline:
            assert node.poll() is None, log.read_text()
            time.sleep(0.5)
        health = healthz(port)
        while health[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
            health = healthz(port)
        assert health == (200, "ready\n"), log.read_text()
        workers = psutil.Process(node.pid).children(recursive=True)
        assert workers
        for worker in workers:
            environ = worker.environ()
            assert "ORACLE_PRIVATE_KEY" not in environ
            assert KEY[2:] not in " ".join(environ.values())
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=60) == 0, log.read_text()
    finally:
        if node.poll() is None:
            node.kill()
    text = log.read_text()
    assert "worker stopped" in text  # its workers finished and went too
    assert KEY[2:] not in text
