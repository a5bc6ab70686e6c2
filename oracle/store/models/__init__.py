"""The node's tables, one module per concern; importing this registers them all."""

from oracle.store.models.base import Base
from oracle.store.models.binding import NodeBinding
from oracle.store.models.chain import ChainBlock, ChainCheckpoint, ChainEvent
from oracle.store.models.outbox import TX_KINDS, TX_STATUSES, OutgoingTx, TxKind, TxStatus
from oracle.store.models.queue import JOB_KINDS, JOB_STATUSES, Job, JobKind, JobStatus
from oracle.store.models.requests import (
    OPEN_REQUEST_PHASES,
    REQUEST_PHASES,
    Answer,
    Request,
    RequestPhase,
    RequestWake,
    Seat,
)
from oracle.store.models.workers import WORKER_ROLES, WorkerRecord

__all__ = [
    "JOB_KINDS",
    "JOB_STATUSES",
    "OPEN_REQUEST_PHASES",
    "REQUEST_PHASES",
    "TX_KINDS",
    "TX_STATUSES",
    "WORKER_ROLES",
    "Answer",
    "Base",
    "ChainBlock",
    "ChainCheckpoint",
    "ChainEvent",
    "Job",
    "JobKind",
    "JobStatus",
    "NodeBinding",
    "OutgoingTx",
    "Request",
    "RequestPhase",
    "RequestWake",
    "Seat",
    "TxKind",
    "TxStatus",
    "WorkerRecord",
]
