"""The `oracle` command as an operator meets it: config sources, refusals, clean stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from oracle.chain.anvil import Anvil, dev_private_key

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
    assert result.returncode == 2
    assert "ORACLE_PRIVATE_KEY" in result.stderr


def test_db_upgrade_then_status(empty_database_url: str) -> None:
    upgraded = oracle("db", "upgrade", "--database-url", empty_database_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "schema at 0002" in upgraded.stdout
    status = oracle("status", "--database-url", empty_database_url)
    assert status.returncode == 0 and "phase" in status.stdout


def test_models_lists_the_shipped_models() -> None:
    result = oracle("models")
    assert result.returncode == 0
    for name in ("SmolLM2-135M-Instruct-Q4_1", "gemma-3-270m-Q4_K_M", "all-MiniLM-L6-v2"):
        assert f"{name}" in result.stdout
    assert "MISSING" not in result.stdout


def test_a_node_stops_cleanly_on_sigterm(chain: Anvil, database_url: str, tmp_path: Path) -> None:
    from oracle.chain.deploy import deploy_contract

    coordinator = deploy_contract(
        chain.w3, "InferenceCoordinator", 20, 3, sender=chain.w3.eth.accounts[0]
    )
    log = tmp_path / "node.log"
    with log.open("w") as out:
        node = subprocess.Popen(
            [sys.executable, "-m", "oracle.cli", "run", "--rpc", chain.url,
             "--contract", coordinator, "--llm-threads", "1"],
            env={**os.environ, "ORACLE_PRIVATE_KEY": KEY, "ORACLE_DATABASE_URL": database_url},
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while "serving requests" not in log.read_text() and time.monotonic() < deadline:
            assert node.poll() is None, log.read_text()
            time.sleep(0.5)
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=60) == 0, log.read_text()
    finally:
        if node.poll() is None:
            node.kill()
    text = log.read_text()
    assert "worker stopped" in text  # its workers finished and went too
    assert KEY[2:] not in text
