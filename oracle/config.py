"""Node settings: defaults, then the config file, then ``ORACLE_*`` variables, then flags.

The CLI resolves the precedence (click's ``default_map`` and ``auto_envvar_prefix``); this
module holds the typed result and the file loading.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from oracle.consensus import DEFAULT_READ_BACK_MARGIN
from oracle.errors import OracleError
from oracle.lifecycle.context import (
    DEFAULT_MAX_COMMIT_WINDOW_S,
    DEFAULT_MAX_SLASH_BPS,
    DEFAULT_MIN_DISPUTE_WINDOW_S,
    DEFAULT_MIN_EXPIRY_GRACE_S,
    DEFAULT_MIN_REVEAL_WINDOW_S,
)

DEFAULT_MODELS = ("SmolLM2-135M-Instruct-Q4_1",)
DEFAULT_EMBEDDING_MODELS = ("all-MiniLM-L6-v2",)
DEFAULT_DATA_DIR = Path.home() / ".oracle"
DEFAULT_PRICE_PER_TOKEN_WEI = 10**9
"""1 gwei per token of work (read or written): a floor against free work, not a business
price. A request at the coordinator's minimum fee per seat (1e12 wei) buys up to 1,000
tokens of prompt and maxTokens from a node at this price; an operator sets its own
(--price-per-token-wei, --model-price)."""
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_PRIVATE_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


class ConfigError(OracleError):
    """The configuration is not usable"""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSettings:
    rpc_urls: tuple[str, ...]
    """The chain's JSON-RPC endpoints, in the order they are tried (failover)."""
    contract: str
    private_key: str = field(repr=False)
    """Never logged or printed; repr leaves it out."""
    database_url: str | None = None
    """None: an embedded Postgres under data_dir."""
    data_dir: Path = DEFAULT_DATA_DIR
    models: tuple[str, ...] = DEFAULT_MODELS
    embedding_models: tuple[str, ...] = DEFAULT_EMBEDDING_MODELS
    llm_workers: int = 1
    llm_threads: int = 2
    embedding_workers: int = 1
    autoscale: bool = True
    """Scale workers with demand; False: exactly llm_workers / embedding_workers per model."""
    min_workers: int | None = None
    """Workers kept per served model even when idle; None: llm_workers / embedding_workers."""
    max_workers: int | None = None
    """All workers together; None: the minimums (at least one per model) plus one spare."""
    max_memory_mib: int | None = None
    max_threads: int | None = None
    gpu_slots: int = 0
    llm_engine: Literal["batched", "sequential"] = "sequential"
    """batched: each LLM worker decodes up to ``parallel`` jobs together."""
    parallel: int = 8
    """Jobs a batched LLM worker decodes together."""
    gpu_layers: int = 0
    """Layers of each LLM on a GPU (-1: all); 0: the LLM workers run on the CPU."""
    slot_tokens: int | None = None
    """Context of one job of a batched worker (prompt plus maxTokens); None: the model's."""
    embedding_device: str = "cpu"
    """Where embedding workers run: cpu or cuda."""
    gpus: tuple[int, ...] = ()
    """GPUs the workers may use, by index; empty: every GPU nvidia-smi lists."""
    gpu_memory_mib: float | None = None
    """Memory of each GPU the workers may take; None: the GPU's total (nvidia-smi)."""
    idle_unload_s: float = 300.0
    confirmations: int = 0
    start_block: int = 0
    poll_interval_s: float = 0.5
    stake_wei: int = 0
    """Stake sent when registering; the coordinator's minStake when that is more."""
    http_port: int | None = None
    http_host: str = "127.0.0.1"
    """Where /healthz and /metrics listen: this machine only unless the operator widens it."""
    rpc_wait_s: float = 60.0
    """How long a start waits for the RPC endpoint to answer before giving up."""
    max_commit_window_s: float = DEFAULT_MAX_COMMIT_WINDOW_S
    """Requests whose commit deadline lies further ahead are declined (NodeContext's)."""
    min_reveal_window_s: float = DEFAULT_MIN_REVEAL_WINDOW_S
    min_dispute_window_s: float = DEFAULT_MIN_DISPUTE_WINDOW_S
    max_slash_bps: int = DEFAULT_MAX_SLASH_BPS
    min_expiry_grace_s: float = DEFAULT_MIN_EXPIRY_GRACE_S
    """The request terms this node commits under (``AcceptedTerms``)."""
    retention_days: float = 7.0
    """Finished requests, old events and settled transactions are pruned after this; 0 keeps
    everything."""
    migrate: bool = True
    verify_tolerance_bits: int | None = None
    read_back_margin: float = DEFAULT_READ_BACK_MARGIN
    """Logits (NodeContext's); 0: other seats' answers are not read back."""
    price_per_token_wei: int = DEFAULT_PRICE_PER_TOKEN_WEI
    """What this node asks per token of work of a served model without a price of its own;
    admission declines a request whose fee per seat is below price * (prompt tokens, as
    estimated, + maxTokens)."""
    model_prices: tuple[tuple[str, int], ...] = ()
    """(model, wei per token of work) for served models priced apart from the default."""

    def __post_init__(self) -> None:
        if not self.rpc_urls or not all(self.rpc_urls):
            raise ConfigError("--rpc is required")
        if not self.contract:
            raise ConfigError("--contract (the coordinator's address) is required")
        if not _ADDRESS.match(self.contract):
            raise ConfigError(
                f"--contract {self.contract!r} is not an address (0x and 40 hex digits)"
            )
        if not self.private_key:
            raise ConfigError("a key is required: ORACLE_PRIVATE_KEY or --keystore")
        if not self.models:
            raise ConfigError("serve at least one model (--model)")
        self._check_ranges()
        self._check_prices()
        floors = sum(self.min_workers_per_model.values())
        if self.autoscale and self.max_workers is not None and self.max_workers < floors:
            raise ConfigError(
                f"--max-workers {self.max_workers} is below the minimum workers of the "
                f"served models ({floors})"
            )

    def _check_ranges(self) -> None:
        for name, value in (
            ("llm_workers", self.llm_workers),
            ("llm_threads", self.llm_threads),
            ("parallel", self.parallel),
        ):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, not {value}")
        if self.gpu_layers < -1:
            raise ConfigError(f"gpu_layers must be -1 (all) or more, not {self.gpu_layers}")
        if self.gpu_memory_mib is not None and self.gpu_memory_mib <= 0:
            raise ConfigError(f"gpu_memory_mib must be positive, not {self.gpu_memory_mib}")
        if self.llm_engine not in ("batched", "sequential"):
            raise ConfigError(f"llm_engine must be batched or sequential, not {self.llm_engine!r}")
        if self.max_commit_window_s <= 0:
            raise ConfigError(
                f"max_commit_window_s must be positive, not {self.max_commit_window_s}"
            )
        if not 0 <= self.max_slash_bps <= 10_000:
            raise ConfigError(f"max_slash_bps must be 0 to 10000, not {self.max_slash_bps}")
        for name, number in (
            ("rpc_wait_s", self.rpc_wait_s),
            ("retention_days", self.retention_days),
            ("min_reveal_window_s", self.min_reveal_window_s),
            ("min_dispute_window_s", self.min_dispute_window_s),
            ("min_expiry_grace_s", self.min_expiry_grace_s),
            ("read_back_margin", self.read_back_margin),
        ):
            if number < 0:
                raise ConfigError(f"{name} must not be negative, not {number}")

    def _check_prices(self) -> None:
        if self.price_per_token_wei < 0:
            raise ConfigError(
                f"--price-per-token-wei must not be negative, not {self.price_per_token_wei}"
            )
        priced: set[str] = set()
        for model, price in self.model_prices:
            if model not in self.models:
                raise ConfigError(
                    f"--model-price names {model!r}, which this node does not serve (--model)"
                    f"{_nearest(model, self.models)}"
                )
            if model in priced:
                raise ConfigError(f"--model-price gives {model!r} two prices")
            if price < 0:
                raise ConfigError(f"--model-price {model}: must not be negative, not {price}")
            priced.add(model)

    @property
    def workers_on_gpu(self) -> bool:
        """Whether some worker runs on a GPU (LLM layers there, or embeddings on cuda)."""
        return self.gpu_layers != 0 or self.embedding_device != "cpu"

    def price_of(self, model: str) -> int:
        """Wei per token of work this node asks for ``model``."""
        return dict(self.model_prices).get(model, self.price_per_token_wei)

    @property
    def min_workers_per_model(self) -> dict[tuple[Literal["llm", "embedding"], str], int]:
        """(role, model) of every served model with the workers it always keeps."""
        llm = self.llm_workers if self.min_workers is None else self.min_workers
        embedding = self.embedding_workers if self.min_workers is None else self.min_workers
        return {("llm", m): llm for m in self.models} | {
            ("embedding", m): embedding for m in self.embedding_models
        }

    @property
    def worker_budget(self) -> int:
        """--max-workers, or the minimums (at least one per served model) plus one spare."""
        if self.max_workers is not None:
            return self.max_workers
        floors = self.min_workers_per_model.values()
        return sum(max(floor, 1) for floor in floors) + 1


def load_config_file(path: Path) -> dict[str, Any]:
    """The ``[node]`` table (or the whole file) of a TOML config, keys as CLI option names."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    table = data.get("node", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [node] must be a table")
    return {key.replace("-", "_"): value for key, value in table.items()}


def parse_wei(value: str | int | float, *, what: str) -> int:
    """A non-negative whole amount of wei: ``1000000000``, ``1e9``, ``2.5e12``, ``1_000``."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} {value!r} is not an amount of wei")
    try:
        number = Decimal(value if isinstance(value, int) else str(value).strip().replace("_", ""))
    except InvalidOperation as exc:
        raise ConfigError(
            f"{what} {value!r} is not an amount of wei (a whole number: 1000000000, 1e9)"
        ) from exc
    if not number.is_finite() or number != number.to_integral_value():
        raise ConfigError(f"{what} {value!r} is not a whole number of wei")
    if number < 0:
        raise ConfigError(f"{what} must not be negative, not {value!r}")
    return int(number)


def parse_model_prices(entries: Iterable[str]) -> tuple[tuple[str, int], ...]:
    """``MODEL=WEI`` entries (``--model-price``) as (model, wei per token of work) pairs."""
    prices = []
    for entry in entries:
        model, sep, price = entry.rpartition("=")
        if not sep or not model.strip():
            raise ConfigError(
                f"--model-price {entry!r} is not MODEL=WEI (wei per token of work of MODEL)"
            )
        prices.append((model.strip(), parse_wei(price, what=f"--model-price {model.strip()}")))
    return tuple(prices)


def check_private_key(key: str, *, source: str) -> str:
    """``key`` with a 0x prefix, or a ConfigError naming ``source`` (never the key itself)."""
    key = key.strip()
    if not _PRIVATE_KEY.match(key):
        raise ConfigError(
            f"{source} is not a private key: expected 64 hex digits (0x optional), "
            f"got {len(key)} characters"
        )
    if int(key, 16) == 0:
        raise ConfigError(f"{source} is not a private key: it is zero")
    return key if key.startswith("0x") else "0x" + key


def check_known_keys(keys: Iterable[str], known: Iterable[str], *, where: str) -> None:
    """A ConfigError for the first key not in ``known``, naming the nearest known one."""
    known = sorted(known)
    for key in keys:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}{_nearest(key, known)}")


def unknown_environment(environ: Mapping[str, str], prefix: str, known: Iterable[str]) -> None:
    """A ConfigError for a ``prefix``-ed variable (``ORACLE_RUN_``) that names no option."""
    names = {prefix + name.upper() for name in known}
    for variable in sorted(environ):
        if variable.startswith(prefix) and variable not in names:
            raise ConfigError(
                f"environment variable {variable} names no option{_nearest(variable, names)}"
            )


def _nearest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""
