"""Start and stop the native anvil binary that the npm package @foundry-rs/anvil ships."""

from __future__ import annotations

import platform
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from web3 import Web3
from web3.types import RPCEndpoint

from oracle.children import start_child

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout: node_modules lives there
CHAIN_ID = 31337

# anvil's default accounts, derived from its well-known "test test ... junk" mnemonic.
DEV_PRIVATE_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
)

DEV_MNEMONIC = "test test test test test test test test test test test junk"


def dev_private_key(index: int) -> str:
    """The key of anvil's ``index``-th default account (any index, not only the first five)."""
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    account = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return "0x" + bytes(account.key).hex()


_PLATFORMS = {"Linux": "linux", "Darwin": "darwin", "Windows": "win32"}
_ARCHITECTURES = {"x86_64": "amd64", "AMD64": "amd64", "arm64": "arm64", "aarch64": "arm64"}


def anvil_binary() -> Path:
    """Path of the native anvil for this machine inside node_modules/."""
    system = _PLATFORMS[platform.system()]
    arch = _ARCHITECTURES[platform.machine()]
    name = "anvil.exe" if system == "win32" else "anvil"
    binary = REPO_ROOT / "node_modules" / "@foundry-rs" / f"anvil-{system}-{arch}" / "bin" / name
    if not binary.is_file():
        raise FileNotFoundError(f"{binary} is missing; run `make setup` (npm ci)")
    return binary


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Anvil:
    """A running anvil node: its URL, a Web3 client and the process behind them."""

    url: str
    w3: Web3
    process: subprocess.Popen[bytes] = field(repr=False)
    chain_id: int = CHAIN_ID
    private_keys: tuple[str, ...] = DEV_PRIVATE_KEYS

    def rpc(self, method: str, *params: object) -> object:
        """Call a raw JSON-RPC method (anvil_*, evm_*) and return its result."""
        response = self.w3.provider.make_request(RPCEndpoint(method), list(params))
        if "error" in response:
            raise RuntimeError(f"{method} failed: {response['error']}")
        return response["result"]

    def stop(self) -> None:
        """Terminate the process, killing it if it does not exit promptly."""
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_anvil(*extra_args: str, attempts: int = 3) -> Anvil:
    """Start anvil on a free port and wait until it answers ``eth_chainId``."""
    for _ in range(attempts):
        port = free_port()
        command = [str(anvil_binary()), "--port", str(port), "--chain-id", str(CHAIN_ID)]
        # a child that ends with us: a killed `oracle dev` or test run leaves no anvil behind
        process = start_child([*command, "--silent", *extra_args])
        url = f"http://127.0.0.1:{port}"
        provider = Web3.HTTPProvider(
            url, request_kwargs={"timeout": 30}, exception_retry_configuration=None
        )
        w3 = Web3(provider)
        if _wait_until_ready(w3, process):
            return Anvil(url=url, w3=w3, process=process)
        # Most likely another process grabbed the port in between: try a new one.
        process.kill()
        process.wait()
    raise RuntimeError(f"anvil did not start after {attempts} attempts")


def _wait_until_ready(w3: Web3, process: subprocess.Popen[bytes], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if w3.eth.chain_id == CHAIN_ID:
                return True
        except requests.ConnectionError:  # not listening yet
            time.sleep(0.05)
    return False
