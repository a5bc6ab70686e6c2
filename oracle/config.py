"""Node settings: defaults, then the config file, then ``ORACLE_*`` variables, then flags.

The CLI resolves the precedence (click's ``default_map`` and ``auto_envvar_prefix``); this
module holds the typed result and the file loading.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from oracle.errors import OracleError
from oracle.lifecycle.context import TestFault

DEFAULT_MODELS = ("SmolLM2-135M-Instruct-Q4_1",)
DEFAULT_EMBEDDING_MODELS = ("all-MiniLM-L6-v2",)
DEFAULT_DATA_DIR = Path.home() / ".oracle"


class ConfigError(OracleError):
    """The configuration is not usable"""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSettings:
    rpc_url: str
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
    idle_unload_s: float = 300.0
    confirmations: int = 0
    start_block: int = 0
    poll_interval_s: float = 0.5
    stake_wei: int = 0
    http_port: int | None = None
    migrate: bool = True
    verify_tolerance_bits: int | None = None
    test_fault: TestFault | None = None

    def __post_init__(self) -> None:
        if not self.rpc_url:
            raise ConfigError("--rpc is required")
        if not self.contract:
            raise ConfigError("--contract (the coordinator's address) is required")
        if not self.private_key:
            raise ConfigError("a key is required: ORACLE_PRIVATE_KEY or --keystore")
        if not self.models:
            raise ConfigError("serve at least one model (--model)")
        for name, value in (("llm_workers", self.llm_workers), ("llm_threads", self.llm_threads)):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, not {value}")
        floors = sum(self.min_workers_per_model.values())
        if self.autoscale and self.max_workers is not None and self.max_workers < floors:
            raise ConfigError(
                f"--max-workers {self.max_workers} is below the minimum workers of the "
                f"served models ({floors})"
            )

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
