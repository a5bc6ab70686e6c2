"""The ``oracle`` command. Every option also comes from the config file and ``ORACLE_*``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from oracle.calibrate import calibrate_command
from oracle.config import (
    DEFAULT_DATA_DIR,
    ConfigError,
    NodeSettings,
    check_known_keys,
    check_private_key,
    load_config_file,
    parse_model_prices,
    parse_wei,
    unknown_environment,
)
from oracle.engine.llm_options import KV_LAYOUTS, KvLayout
from oracle.errors import OracleError
from oracle.lifecycle.conduct import HONEST
from oracle.lifecycle.hostile import HOSTILE_CONDUCTS
from oracle.logs import configure_logging, printable

if TYPE_CHECKING:
    from oracle.engine.supervisor import WorkerSpec


NODE_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(NodeSettings)}
"""``oracle run``'s option defaults: NodeSettings' own, so the two cannot drift apart."""

F = TypeVar("F", bound=Callable[..., Any])  # a click command, decorated in place

SECRET_VARIABLES = ("ORACLE_PRIVATE_KEY", "ORACLE_RUN_PRIVATE_KEY", "ORACLE_KEYSTORE_PASSWORD")
"""Read once by ``oracle run``, then removed, so worker processes never inherit them."""


class PlainError(click.ClickException):
    """A configuration the command cannot use: one sentence on stderr, exit status 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {printable(self.format_message())}", err=True)


def echo_untrusted(line: str) -> None:
    """Print text that may hold what a requester wrote (prompts, outputs, model names)."""
    click.echo(printable(line))


class WeiAmount(click.ParamType[int, Any]):
    """A whole amount of wei: ``1000000000``, ``1e9``, ``2.5e12``."""

    name = "wei"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        what = f"--{param.name.replace('_', '-')}" if param and param.name else "amount"
        try:
            return parse_wei(value, what=what)
        except ConfigError as exc:
            self.fail(exc.detail or str(exc), param, ctx)


def llm_engine_options(*, engine_dest: str) -> Callable[[F], F]:
    """The LLM engine's options, the same for ``oracle run`` (its workers) and ``oracle
    worker``; ``engine_dest`` names the parameter ``--engine`` fills."""
    options = [
        click.option(
            "--engine",
            engine_dest,
            type=click.Choice(["batched", "sequential"]),
            default=NODE_DEFAULTS["llm_engine"],
            help="LLM engine: batched decodes many jobs together (a GPU's way); "
            "sequential one at a time.",
        ),
        click.option(
            "--parallel",
            default=NODE_DEFAULTS["parallel"],
            type=click.IntRange(min=1),
            help="Batched: jobs one LLM worker decodes together (on a GPU, 64 to 256).",
        ),
        click.option(
            "--gpu-layers",
            default=NODE_DEFAULTS["gpu_layers"],
            type=click.IntRange(min=-1),
            help="LLM layers on a GPU (-1: all); needs llama-cpp-python built with CUDA.",
        ),
        click.option(
            "--slot-tokens",
            default=NODE_DEFAULTS["slot_tokens"],
            type=click.IntRange(min=16),
            help="Batched: context of one job (prompt + maxTokens) [default: the model's].",
        ),
    ]

    def apply(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Read a TOML file whose keys are the option names (``rpc``, ``model``, ``llm-threads``)."""
    if value:
        names = {
            opt.lstrip("-").replace("-", "_"): param.name
            for param in ctx.command.params
            for opt in param.opts
            if param.name
        }
        try:
            table = load_config_file(Path(value))
            check_known_keys(table, names, where=f"config file {value}")
        except ConfigError as exc:
            raise PlainError(exc.detail or str(exc)) from exc
        repeatable = {p.name for p in ctx.command.params if getattr(p, "multiple", False)}
        values = {names[key]: v for key, v in table.items()}
        for name in repeatable & values.keys():  # `rpc = "..."` as well as `rpc = [...]`
            if isinstance(values[name], str):
                values[name] = [values[name]]
            elif isinstance(values[name], dict):  # `[node.model-price]` with `MODEL = WEI`
                values[name] = [f"{key}={value}" for key, value in values[name].items()]
        ctx.default_map = {**(ctx.default_map or {}), **values}
    return value


@click.group(context_settings={"auto_envvar_prefix": "ORACLE", "show_default": True})
@click.option("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR.")
@click.option("--log-json", is_flag=True, help="One JSON object per log line.")
@click.option("--log-prefix", default="", hidden=True)
def main(log_level: str, log_json: bool, log_prefix: str) -> None:
    """Oracle: LLM inference for smart contracts, agreed on by independent nodes."""
    configure_logging(log_level, json_lines=log_json, prefix=log_prefix)


# --- run -----------------------------------------------------------------------------


@main.command()
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    callback=_load_config,
    is_eager=True,
    expose_value=False,
    help="TOML file with the options below (a [node] table).",
)
@click.option(
    "--rpc",
    "rpc_urls",
    required=True,
    multiple=True,
    envvar="ORACLE_RPC",
    help="JSON-RPC URL of the chain; give it again for fallback endpoints, tried in order.",
)
@click.option(
    "--contract",
    required=True,
    envvar="ORACLE_CONTRACT",
    help="Address of the InferenceCoordinator.",
)
@click.option(
    "--private-key",
    default=None,
    show_default=False,
    hidden=True,
    envvar="ORACLE_PRIVATE_KEY",
    help="The node's key (prefer ORACLE_PRIVATE_KEY or --keystore).",
)
@click.option(
    "--keystore",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="ORACLE_KEYSTORE",
    help="Encrypted key file; password from ORACLE_KEYSTORE_PASSWORD.",
)
@click.option(
    "--database-url",
    default=None,
    envvar="ORACLE_DATABASE_URL",
    help="Postgres URL; an embedded server when omitted.",
)
@click.option("--data-dir", type=click.Path(file_okay=False), default=str(DEFAULT_DATA_DIR))
@click.option(
    "--model",
    "models",
    multiple=True,
    default=NODE_DEFAULTS["models"],
    help="A model to serve (repeat for several); see `oracle models`.",
)
@click.option(
    "--embedding-model",
    "embedding_models",
    multiple=True,
    default=NODE_DEFAULTS["embedding_models"],
)
@click.option(
    "--llm-workers",
    default=NODE_DEFAULTS["llm_workers"],
    type=click.IntRange(min=1),
    help="Worker processes per model.",
)
@click.option(
    "--llm-threads",
    default=NODE_DEFAULTS["llm_threads"],
    type=click.IntRange(min=1),
    help="Threads per LLM worker.",
)
@click.option(
    "--autoscale/--no-autoscale",
    default=True,
    help="Scale workers with demand inside the budget below; off: a fixed pool per model.",
)
@click.option(
    "--min-workers",
    default=None,
    type=click.IntRange(min=0),
    help="Workers kept per served model even when idle [default: --llm-workers, 1 embedding].",
)
@click.option(
    "--max-workers",
    default=None,
    type=click.IntRange(min=1),
    help="Worker processes in all [default: the minimums plus one spare].",
)
@click.option(
    "--max-memory-mib",
    default=None,
    type=click.IntRange(min=1),
    help="Memory of all workers together, from per-model estimates [default: no limit].",
)
@click.option(
    "--max-threads",
    default=None,
    type=click.IntRange(min=1),
    help="Threads of all workers (--llm-threads per LLM worker, 1 per embedding worker) "
    "[default: no limit].",
)
@click.option(
    "--gpu-slots",
    default=NODE_DEFAULTS["gpu_slots"],
    type=click.IntRange(min=0),
    help="GPU workers at once.",
)
@llm_engine_options(engine_dest="llm_engine")
@click.option(
    "--embedding-device",
    default=NODE_DEFAULTS["embedding_device"],
    help="Where embedding workers run: cpu or cuda.",
)
@click.option(
    "--gpu",
    "gpus",
    multiple=True,
    type=click.IntRange(min=0),
    help="A GPU the workers may use, by index (repeat for several) [default: all].",
)
@click.option(
    "--gpu-memory-mib",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Memory of each GPU the workers may take [default: its total, from nvidia-smi].",
)
@click.option(
    "--idle-unload-s",
    default=NODE_DEFAULTS["idle_unload_s"],
    type=click.FloatRange(min=0),
    help="Stop a worker above the minimum after this long without jobs for its model.",
)
@click.option(
    "--confirmations",
    default=NODE_DEFAULTS["confirmations"],
    type=click.IntRange(min=0),
    help="Blocks to wait before acting.",
)
@click.option(
    "--start-block",
    default=NODE_DEFAULTS["start_block"],
    type=click.IntRange(min=0),
    help="First block on a fresh database.",
)
@click.option(
    "--poll-interval", "poll_interval_s", default=NODE_DEFAULTS["poll_interval_s"], type=float
)
@click.option(
    "--stake-wei",
    default=NODE_DEFAULTS["stake_wei"],
    type=click.IntRange(min=0),
    help="Stake sent when registering; below the coordinator's minStake (0 by default), "
    "minStake. It is locked while the node holds seats and slashed for a seat never "
    "revealed or a reveal excluded by disputes.",
)
@click.option(
    "--price-per-token-wei",
    default=NODE_DEFAULTS["price_per_token_wei"],
    type=WeiAmount(),
    help="Wei asked per token of work (prompt and maxTokens) of a model without its own "
    "--model-price: a request whose fee per seat (fee / quorum) is below this times its "
    "prompt's estimated tokens plus maxTokens is declined.",
)
@click.option(
    "--model-price",
    "model_prices",
    multiple=True,
    metavar="MODEL=WEI",
    help="Wei per token of work for one served model (repeat for several).",
)
@click.option("--http-port", default=None, type=int, help="Serve /healthz and /metrics here.")
@click.option(
    "--http-host",
    default=NODE_DEFAULTS["http_host"],
    help="Interface for /healthz and /metrics (0.0.0.0: every interface).",
)
@click.option(
    "--rpc-wait-s",
    default=NODE_DEFAULTS["rpc_wait_s"],
    type=click.FloatRange(min=0),
    help="At start, how long to retry an RPC endpoint that does not answer.",
)
@click.option(
    "--max-commit-window-s",
    default=NODE_DEFAULTS["max_commit_window_s"],
    type=click.FloatRange(min=0, min_open=True),
    help="Decline requests whose commit deadline is further ahead than this (a commit "
    "locks the stake until the request expires).",
)
@click.option(
    "--min-reveal-window-s",
    default=NODE_DEFAULTS["min_reveal_window_s"],
    type=click.FloatRange(min=0),
    help="Decline requests the coordinator gave a shorter reveal window (a seat that "
    "cannot reveal in time is slashed), or one of fewer than three of the chain's blocks.",
)
@click.option(
    "--min-dispute-window-s",
    default=NODE_DEFAULTS["min_dispute_window_s"],
    type=click.FloatRange(min=0),
    help="Decline requests with a shorter dispute window (at least a reveal's "
    "verification), or one of fewer than three of the chain's blocks, as the listener times "
    "them: else a lying last revealer cannot be disputed.",
)
@click.option(
    "--max-slash-bps",
    default=NODE_DEFAULTS["max_slash_bps"],
    type=click.IntRange(min=0, max=10_000),
    help="Decline requests that slash more of a seat's stake (basis points).",
)
@click.option(
    "--min-expiry-grace-s",
    default=NODE_DEFAULTS["min_expiry_grace_s"],
    type=click.FloatRange(min=0),
    help="Decline requests that may be expired sooner after their dispute window (an "
    "expired request pays its nodes nothing).",
)
@click.option(
    "--retention-days",
    default=NODE_DEFAULTS["retention_days"],
    type=click.FloatRange(min=0),
    help="Prune finished requests, old events and settled transactions after this; "
    "0 keeps everything.",
)
@click.option(
    "--no-migrate", is_flag=True, help="Refuse to start on an old schema instead of migrating."
)
@click.option("--verify-tolerance-bits", default=None, type=int)
@click.option(
    "--read-back-margin",
    default=NODE_DEFAULTS["read_back_margin"],
    type=click.FloatRange(min=0),
    help="Read other seats' answers unlike ours back through the model they name (where "
    "this node serves it) and dispute one that no way of writing comes within this many "
    "logits of what the model writes with the request's seed; 0 reads none.",
)
@click.option(
    "--test-fault",
    type=click.Choice(sorted(HOSTILE_CONDUCTS)),
    default=None,
    hidden=True,
    help="Test only: misbehave on purpose (oracle.lifecycle.hostile).",
)
def run(keystore: str | None, private_key: str | None, no_migrate: bool, **options: Any) -> None:
    """Run a node: follow the chain, answer requests, commit, reveal, verify, finalize."""
    from oracle.node import run_node

    known = [param.name for param in click.get_current_context().command.params if param.name]
    try:
        unknown_environment(os.environ, "ORACLE_RUN_", known)
        key = _read_key(private_key, keystore)
    except ConfigError as exc:
        raise PlainError(exc.detail or str(exc)) from exc
    finally:
        for variable in SECRET_VARIABLES:  # worker processes inherit the environment
            os.environ.pop(variable, None)
    fault = options.pop("test_fault")
    conduct = HOSTILE_CONDUCTS[fault] if fault else HONEST
    settings = _settings(private_key=key, migrate=not no_migrate, **options)
    _serve(lambda stop: run_node(settings, stop, conduct))


def _settings(**options: Any) -> NodeSettings:
    options["models"] = tuple(options["models"])
    options["rpc_urls"] = tuple(options["rpc_urls"])
    options["embedding_models"] = tuple(options["embedding_models"])
    options["gpus"] = tuple(options["gpus"])
    options["data_dir"] = Path(options["data_dir"])
    try:
        options["model_prices"] = parse_model_prices(options["model_prices"])
        return NodeSettings(**options)
    except ConfigError as exc:
        raise PlainError(exc.detail or str(exc)) from exc


def _read_key(private_key: str | None, keystore: str | None) -> str:
    if keystore:
        return _decrypt_keystore(Path(keystore), os.environ.get("ORACLE_KEYSTORE_PASSWORD", ""))
    if not private_key:
        raise ConfigError("no key: set ORACLE_PRIVATE_KEY or pass --keystore")
    return check_private_key(private_key, source="ORACLE_PRIVATE_KEY (or --private-key)")


def _decrypt_keystore(path: Path, password: str) -> str:
    from eth_account import Account

    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"keystore {path} cannot be read: {exc.strerror}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"keystore {path} is not a JSON keystore file") from exc
    try:
        key: bytes = Account.decrypt(document, password)
    except ValueError as exc:
        raise ConfigError(
            f"keystore {path} cannot be decrypted: wrong ORACLE_KEYSTORE_PASSWORD?"
        ) from exc
    except (KeyError, TypeError, NotImplementedError) as exc:
        raise ConfigError(f"keystore {path} is not an Ethereum keystore file") from exc
    return "0x" + key.hex()


def _serve(make: Any) -> None:
    """Run a coroutine until SIGINT/SIGTERM; report our own errors plainly."""

    async def body() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await make(stop)

    try:
        asyncio.run(body())
    except OracleError as exc:
        click.echo(f"error: {printable(str(exc))}", err=True)
        sys.exit(1)


# --- worker --------------------------------------------------------------------------


@main.command()
@click.option(
    "--database-url", required=True, envvar="ORACLE_DATABASE_URL", help="The node's Postgres."
)
@click.option(
    "--model",
    "--models",
    "models",
    multiple=True,
    help="A model to serve; several (`--models A B`): one worker process each.",
)
@click.argument("more_models", nargs=-1)
@click.option(
    "--role",
    type=click.Choice(["llm", "embedding"]),
    default=None,
    help="What the models are [default: embedding for known embedding models, else llm].",
)
@click.option("--threads", default=2, type=click.IntRange(min=1))
@click.option("--device", default="cpu", help="Embedding device: cpu or cuda.")
@click.option(
    "--lease-s",
    default=30.0,
    type=click.FloatRange(min=1),
    help="Job lease: without a heartbeat for this long, the job goes to another worker.",
)
@llm_engine_options(engine_dest="engine")
@click.option(
    "--kv-budget-mib",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Batched: KV-cache memory; the slots are as many as it holds (at most --parallel).",
)
@click.option(
    "--embed-claim",
    default=None,
    type=click.IntRange(min=1),
    help="Embedding: texts claimed at once [default: 128; on a GPU, 2048].",
)
@click.option(
    "--embed-batch",
    default=None,
    type=click.IntRange(min=1),
    help="Embedding: texts a forward pass [default: 32; on a GPU, 256].",
)
@click.option(
    "--embed-lanes",
    default=None,
    type=click.IntRange(min=1),
    help="Embedding: claim-run-record loops sharing the model; one claims and another "
    "records while a batch runs [default: 1; on a GPU, 3].",
)
@click.option(
    "--embed-process/--no-embed-process",
    default=None,
    help="Embedding: the model runs in a process of its own, the queue work in this one "
    "[default: on a GPU only].",
)
@click.option(
    "--contexts",
    default=None,
    type=click.IntRange(min=1),
    help="Batched: llama.cpp contexts decoded in turn [default: 2 with --gpu-layers, else 1].",
)
@click.option(
    "--device-top-k",
    is_flag=True,
    help="Batched: top-k 40 of each sequence on the GPU (llama.cpp's experimental samplers).",
)
@click.option(
    "--kv-layout",
    default=None,
    type=click.Choice(KV_LAYOUTS),
    help="Batched: a context's KV cache, a stream a sequence or shared by its sequences "
    "[default: streams].",
)
@click.option(
    "--supervisor-pid",
    default=None,
    type=click.IntRange(min=1),
    help="The process that started this worker (set by the node's supervisor): once it is "
    "gone, the worker finishes its batch and stops. One model only.",
)
def worker(
    database_url: str,
    models: tuple[str, ...],
    more_models: tuple[str, ...],
    role: str | None,
    threads: int,
    device: str,
    lease_s: float,
    engine: str,
    parallel: int,
    gpu_layers: int,
    kv_budget_mib: float | None,
    slot_tokens: int | None,
    embed_claim: int | None,
    embed_batch: int | None,
    embed_lanes: int | None,
    embed_process: bool | None,
    contexts: int | None,
    device_top_k: bool,
    kv_layout: KvLayout | None,
    supervisor_pid: int | None,
) -> None:
    """Run workers (one process per model); they share only the database with the node."""
    from oracle.engine.llm_options import LlmEngineOptions
    from oracle.engine.supervisor import WorkerSpec, WorkerSupervisor, role_of

    llm = LlmEngineOptions(
        engine="batched" if engine == "batched" else "sequential",
        parallel=parallel,
        gpu_layers=gpu_layers,
        kv_budget_mib=kv_budget_mib,
        slot_tokens=slot_tokens,
        contexts=contexts,
        device_top_k=device_top_k,
        kv_layout=kv_layout,
    )
    names = [*models, *more_models]
    if not names:
        raise click.UsageError("name a model: --model NAME (or --models NAME...)")
    specs = [
        WorkerSpec(
            role="embedding" if (role or role_of(name)) == "embedding" else "llm",
            model=name,
            threads=threads,
            device=device,
            lease_s=lease_s,
            llm=llm,
            embed_claim=embed_claim,
            embed_batch=embed_batch,
            embed_lanes=embed_lanes,
            embed_process=embed_process,
        )
        for name in names
    ]
    if len(specs) == 1:
        _run_one_worker(database_url, specs[0], supervisor_pid)
        return
    if supervisor_pid is not None:
        raise click.UsageError("--supervisor-pid is for one model's worker")
    supervisor = WorkerSupervisor(database_url, specs)
    _serve(lambda stop: supervisor.run(stop))


def _run_one_worker(database_url: str, spec: WorkerSpec, supervisor_pid: int | None) -> None:
    from oracle.engine.worker import WorkerConfig, run_worker

    config = WorkerConfig(
        database_url=database_url,
        role=spec.role,
        model=spec.model,
        threads=spec.threads,
        device=spec.device,
        lease_s=spec.lease_s,
        llm=spec.llm,
        embed_claim=spec.embed_claim,
        embed_batch=spec.embed_batch,
        embed_lanes=spec.embed_lanes,
        embed_process=spec.embed_process,
        supervisor_pid=supervisor_pid,
    )
    try:
        run_worker(config)
    except OracleError as exc:
        click.echo(f"error: {printable(str(exc))}", err=True)
        sys.exit(1)


# --- db, models, status ----------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--database-url", required=True, envvar="ORACLE_DATABASE_URL")
def db_upgrade(database_url: str) -> None:
    """Migrate the database to this version's schema."""
    from oracle.store import current_revision, head_revision, upgrade

    upgrade(database_url)
    click.echo(f"schema at {current_revision(database_url)} (head {head_revision()})")


@main.command()
def models() -> None:
    """List the models this installation knows and whether their files are present."""
    from oracle.consensus.signal import SIGNALS
    from oracle.engine.embedding_models import EMBEDDING_MODELS, resolve_embedding_model
    from oracle.engine.models import DEFAULT_LLMS

    for name, spec in DEFAULT_LLMS.items():
        click.echo(
            f"llm        {name:<32} {_presence(lambda s=spec: s.resolve())}  ({spec.prompt_style})"
        )
    for name in EMBEDDING_MODELS:
        click.echo(f"embedding  {name:<32} {_presence(lambda n=name: resolve_embedding_model(n))}")
    for registered in SIGNALS.values():
        if registered.name == registered.model:
            continue
        how = [
            *(["prompt echo stripped"] if registered.strip_echo else []),
            *(["normalised"] if registered.normalise else []),
            "first word digested" if registered.exact else "bits against a centre",
        ]
        click.echo(
            f"signal     {registered.name:<44} {', '.join(how)} ({registered.model}'s workers)"
        )


def _presence(resolve: Any) -> str:
    try:
        return f"installed at {resolve()}"
    except OracleError as exc:
        return f"MISSING: {exc}"


@main.command()
@click.option("--database-url", required=True, envvar="ORACLE_DATABASE_URL")
@click.option("--limit", default=20)
def status(database_url: str, limit: int) -> None:
    """Show this node's requests, their phases and outcomes."""
    from oracle.status import request_rows

    for line in request_rows(database_url, limit):
        echo_untrusted(line)


# --- request and dev -------------------------------------------------------------------


@main.command()
@click.argument("prompt")
@click.option("--rpc", "rpc_url", required=True, envvar="ORACLE_RPC")
@click.option("--contract", required=True, envvar="ORACLE_CONTRACT")
@click.option(
    "--private-key",
    required=True,
    show_default=False,
    envvar="ORACLE_PRIVATE_KEY",
    help="Pays the fee.",
)
@click.option("--model", "models", multiple=True, default=("SmolLM2-135M-Instruct-Q4_1",))
@click.option("--quorum", default=3, type=click.IntRange(1, 16))
@click.option("--max-tokens", default=48, type=click.IntRange(min=1))
@click.option("--temperature", default=0.2, type=click.FloatRange(0, 2))
@click.option("--max-time-ms", default=60_000, type=click.IntRange(min=1))
@click.option("--sec-distance", default=0.35, type=click.FloatRange(0, 1))
@click.option("--sec-percentage", default=0.67, type=click.FloatRange(0, 1, min_open=True))
@click.option(
    "--embedding-model",
    default="all-MiniLM-L6-v2",
    show_default=True,
    help="How the nodes compare answers: an embedding model, or a registered signal "
    "(`oracle models` lists them; first-word-exact/shake256 agrees on the first word only).",
)
@click.option(
    "--fee-wei",
    default=10**15,
    type=click.IntRange(min=1),
    help="What the nodes share: fee/quorum to each member of the winning cluster, the rest "
    "back to you; at least the coordinator's minFeePerSeat * quorum.",
)
@click.option("--callback", default="0x" + "00" * 20, help="A consumer contract to call back.")
@click.option("--callback-gas-limit", default=0, type=click.IntRange(min=0))
@click.option(
    "--callback-gas-price",
    default=None,
    type=click.IntRange(min=0),
    help="Wei per gas of the callback, prepaid (gas limit * price) and paid to whoever "
    "finalizes [default: twice the current base fee].",
)
@click.option("--wait/--no-wait", default=True, help="Wait for the outcome.")
@click.option("--timeout", "timeout_s", default=300.0)
def request(**options: Any) -> None:
    """Send an inference request and wait for the network's answer."""
    from oracle.client import RequestOptions, RequestRejected, send_request

    try:
        result = send_request(
            RequestOptions(**options), on_event=lambda line: echo_untrusted(f"  {line}")
        )
    except RequestRejected as exc:
        raise PlainError(str(exc)) from exc
    echo_untrusted(result.summary())
    if result.failed:
        sys.exit(2)


@main.command()
@click.option("--nodes", default=3, type=click.IntRange(1, 8))
@click.option("--keep-running", is_flag=True, help="Leave the network up for `oracle request`.")
@click.option("--prompt", default="What is the capital of France? Answer in one short sentence.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=".oracle/dev")
@click.option("--database-url", default=None, help="A Postgres server for the nodes' databases.")
def dev(
    nodes: int, keep_running: bool, prompt: str, data_dir: str, database_url: str | None
) -> None:
    """Start anvil, deploy, run N nodes, send a sample request and print the agreed answer."""
    from oracle.devnet import DevOptions, run_devnet

    options = DevOptions(
        nodes=nodes,
        keep_running=keep_running,
        prompt=prompt,
        data_dir=Path(data_dir),
        database_url=database_url,
    )
    try:
        code = run_devnet(options)
    except OracleError as exc:
        click.echo(f"failed: {printable(str(exc))}", err=True)
        sys.exit(1)
    sys.exit(code)


main.add_command(calibrate_command)

if __name__ == "__main__":
    main()
