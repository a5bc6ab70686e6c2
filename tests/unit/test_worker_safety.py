"""Pure rules of worker safety: what a heartbeat renews, what a worker's environment holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from oracle.engine.supervisor import worker_environment
from oracle.engine.worker import plan_beat
from oracle.store.queue import ClaimedJob

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
GRACE = timedelta(seconds=30)


def _job(job_id: int, deadline_in_s: float) -> ClaimedJob:
    return ClaimedJob(
        id=job_id,
        kind="embedding",
        request_id=None,
        model="m",
        priority=1,
        deadline=NOW + timedelta(seconds=deadline_in_s),
        payload={},
        attempts=1,
        max_attempts=3,
    )


def test_leases_are_renewed_until_the_grace_after_each_deadline() -> None:
    jobs = [_job(1, 10), _job(2, -29), _job(3, -31), _job(4, -600)]
    plan = plan_beat(jobs, now=NOW, grace=GRACE)
    assert (plan.renew, plan.overdue) == ([1, 2], [3, 4])
    assert plan.stuck  # a batch past one of its jobs' limits: presence goes silent


def test_an_idle_worker_or_a_batch_within_its_limits_is_not_stuck() -> None:
    assert not plan_beat([], now=NOW, grace=GRACE).stuck
    assert not plan_beat([_job(1, -1), _job(2, 60)], now=NOW, grace=GRACE).stuck


def test_a_worker_environment_has_no_secrets_and_keeps_what_workers_need() -> None:
    parent = {
        "ORACLE_PRIVATE_KEY": "0x" + "11" * 32,
        "ORACLE_KEYSTORE": "/keys/node.json",
        "ORACLE_KEYSTORE_PASSWORD": "hunter2",
        "ORACLE_RPC": "https://user:pass@rpc.example",
        "ORACLE_DATABASE_URL": "postgresql://old",
        "AWS_SECRET_ACCESS_KEY": "s",
        "GITHUB_TOKEN": "t",
        "ETH_MNEMONIC": "m",
        "MY_API_KEY": "k",
        "ORACLE_DATA_DIR": "/data",
        "PATH": "/usr/bin",
        "HOME": "/home/node",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "2",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "0",
        "PGPASSWORD": "db",
        "PGSSLMODE": "require",
        "VIRTUAL_ENV": "/venv",
    }
    env = worker_environment(parent, "postgresql://node-db")
    assert env == {
        "ORACLE_DATABASE_URL": "postgresql://node-db",
        "ORACLE_DATA_DIR": "/data",
        "PATH": "/usr/bin",
        "HOME": "/home/node",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "2",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "0",
        "PGPASSWORD": "db",  # libpq's: the worker's database connection may rely on it
        "PGSSLMODE": "require",
        "VIRTUAL_ENV": "/venv",
    }

