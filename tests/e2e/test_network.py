"""Whole requests through real nodes: anvil, Postgres, real models, nodes as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from oracle.chain.anvil import dev_private_key
from oracle.client import RequestRejected, follow_request
from oracle.lifecycle.hostile import INVISIBLE_MARK, REWRITTEN_TAIL, UNRELATED_ANSWER
from tests.e2e.conftest import Network

pytestmark = pytest.mark.slow

PROMPT = "What is the capital of France? Answer in one short sentence."
GEMMA = "gemma-3-270m-Q4_K_M"
SMOL = "SmolLM2-135M-Instruct-Q4_1"


def request_block(network: Network, request_id: int) -> int:
    (log,) = (
        network.coordinator()
        .events.InferenceRequested()
        .get_logs(from_block=0, argument_filters={"requestId": request_id})
    )
    return int(log["blockNumber"])


def test_three_honest_nodes_agree_and_are_paid(network: Network) -> None:
    network.start(3)
    network.local.wait_for_registration()
    result = network.ask(PROMPT, quorum=3, fee_wei=3 * 10**15)
    assert result.finalized, result.phases
    assert result.cluster_seats == (0, 1, 2)
    stored = network.consumer().functions.answers(result.request_id).call()
    assert stored == [result.output, SMOL, True]
    # one seed per request, not per node: the same model on the same build gives the
    # same text, so honest nodes agree exactly rather than as three samples would
    outputs = {r["args"]["output"] for r in network.events("Revealed", result.request_id)}
    assert outputs == {result.output}
    start = request_block(network, result.request_id)
    finalizer, prepay = network.finalizer_pay(result.request_id)
    assert prepay > 0  # the callback's gas, prepaid by the request
    for node in network.local.nodes.values():
        earned = 10**15 + (prepay if node.address == finalizer else 0)
        assert network.net_received(node.address, start) == earned


def test_a_request_naming_a_registered_signal_is_embedded_with_it(network: Network) -> None:
    """The centred signal (oracle.consensus.signal) on a development deployment: the
    nodes embed the answer as it reads it (prompt echo stripped, normalised, bits
    against its centre), agree and deliver the answer as the model wrote it."""
    from oracle.consensus.signal import SIGNALS, load_centre
    from oracle.engine.embedder import Embedder

    signal = SIGNALS["all-MiniLM-L6-v2/echo-norm-centred-d7b956d1"]
    network.start(3)
    network.local.wait_for_registration()
    result = network.ask(PROMPT, quorum=3, fee_wei=3 * 10**15, embedding_model=signal.name)
    assert result.finalized, result.phases
    reveals = network.events("Revealed", result.request_id)
    assert {r["args"]["output"] for r in reveals} == {result.output}
    embedder = Embedder(signal.model)
    centred = embedder.embed([signal.text(PROMPT, result.output)], load_centre(signal))[0]
    assert {bytes(r["args"]["embeddingBits"]) for r in reveals} == {centred}
    assert centred != embedder.embed([result.output])[0]  # not the raw sign bits


def test_a_verdict_asked_from_the_command_line_is_agreed_on_its_first_word(
    network: Network,
) -> None:
    """`oracle request --embedding-model first-word-exact/shake256`, as a newcomer would
    send it: the nodes reveal the digest of their answer's first word, agree, and the
    answer is delivered as the model wrote it."""
    from oracle.consensus.signal import FIRST_WORD_EXACT, SIGNALS, digest_bits

    network.start(3)
    network.local.wait_for_registration()
    question = "Is 21 a prime number? Answer yes or no."
    sent = subprocess.run(
        [sys.executable, "-m", "oracle.cli", "request", question, "--quorum", "3",
         "--fee-wei", str(3 * 10**15), "--embedding-model", FIRST_WORD_EXACT,
         "--rpc", network.anvil.url, "--contract", network.deployment.coordinator],
        env={**os.environ, "ORACLE_PRIVATE_KEY": dev_private_key(0)},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    summary = sent.stdout.strip().splitlines()[-1]
    assert summary.startswith("finalized request="), summary
    request_id = int(summary.split()[1].removeprefix("request="))
    (requested,) = network.events("InferenceRequested", request_id)
    assert requested["args"]["frame"]["embeddingModel"] == FIRST_WORD_EXACT
    reveals = network.events("Revealed", request_id)
    outputs = {r["args"]["output"] for r in reveals}
    assert len(outputs) == 1
    word = SIGNALS[FIRST_WORD_EXACT].text(question, outputs.pop())
    assert word
    assert {bytes(r["args"]["embeddingBits"]) for r in reveals} == {digest_bits(word, 384)}


def _time_to_read_back(network: Network) -> None:
    """A dispute window long enough for reading back: disputes must land within it, and
    several nodes reading on this machine's two cores (one thread each) beside the others
    need more than the development chain's 8 s; 30 s, as a chain of 12 s blocks needs
    anyway."""
    coordinator = network.coordinator()
    reveal_window = coordinator.functions.revealWindow().call()
    owner = network.w3.eth.accounts[0]  # deploy_local's deployer
    set_windows = coordinator.functions.setWindows(reveal_window, 30).transact({"from": owner})
    network.w3.eth.wait_for_transaction_receipt(set_windows)


def test_an_unrelated_answer_falls_outside_the_cluster_and_is_read_back_and_slashed(
    network: Network,
) -> None:
    """Honestly embedded, an unrelated answer falls outside the cluster and earns nothing;
    read back through the model, it is not what the model writes for the request, so the
    honest nodes dispute it and its stake is slashed."""
    _time_to_read_back(network)
    network.start(3)
    network.start(1, "--test-fault", "unrelated-answer")
    network.local.wait_for_registration()
    result = network.ask(PROMPT, quorum=4, fee_wei=4 * 10**15)
    assert result.finalized, result.phases
    assert result.output != UNRELATED_ANSWER
    liar = network.local.nodes[3].address
    seat_of = {
        log["args"]["oracle"]: log["args"]["seat"] for log in _events(network, "Committed", result)
    }
    assert seat_of[liar] not in result.cluster_seats
    assert len(result.cluster_seats) == 3
    disputes = _events(network, "Disputed", result)
    assert {d["args"]["accused"] for d in disputes} == {liar}
    assert len({d["args"]["disputer"] for d in disputes}) == 3
    (slash,) = _events(network, "Slashed", result)
    assert (slash["args"]["oracle"], slash["args"]["reason"]) == (liar, 1)  # excluded
    start = request_block(network, result.request_id)
    finalizer, prepay = network.finalizer_pay(result.request_id)
    assert network.net_received(liar, start) == (prepay if liar == finalizer else 0)
    for index in range(3):
        honest = network.local.nodes[index].address
        earned = 10**15 + (prepay if honest == finalizer else 0)  # fee / quorum each
        assert network.net_received(honest, start) == earned


def test_mismatched_embedding_is_disputed_and_excluded(network: Network) -> None:
    network.start(3)
    network.start(1, "--test-fault", "wrong-embedding")
    network.local.wait_for_registration()
    result = network.ask(PROMPT, quorum=4, fee_wei=4 * 10**15)
    assert result.finalized, result.phases
    liar = network.local.nodes[3].address
    disputes = _events(network, "Disputed", result)
    assert {d["args"]["accused"] for d in disputes} == {liar}
    assert len({d["args"]["disputer"] for d in disputes}) == 3
    seat_of = {
        log["args"]["oracle"]: log["args"]["seat"] for log in _events(network, "Committed", result)
    }
    assert seat_of[liar] not in result.cluster_seats


def test_an_invisible_edit_of_the_honest_answer_is_disputed_and_never_delivered(
    network: Network,
) -> None:
    """A node reveals the honest answer with a zero-width space in it, and the honest bits
    (the embedding model drops the character): 0 bits from the honest reveals, it would
    win the medoid's tie whenever its ticket is the smallest, and a consumer comparing
    bytes would read another answer. The honest nodes see their own text in it and
    dispute it; excluded, it is slashed, and the honest bytes are delivered."""
    network.start(3)
    network.start(1, "--test-fault", "invisible-edit")
    network.local.wait_for_registration()
    result = network.ask(PROMPT, quorum=4, fee_wei=4 * 10**15)
    assert result.finalized, result.phases
    rid = result.request_id
    editor = network.local.nodes[3].address
    honest = {network.local.nodes[i].address for i in range(3)}
    reveals = {r["args"]["oracle"]: r["args"]["output"] for r in network.events("Revealed", rid)}
    assert INVISIBLE_MARK in reveals[editor]
    assert reveals[editor].replace(INVISIBLE_MARK, "") in {reveals[a] for a in honest}
    disputes = [
        (d["args"]["disputer"], d["args"]["accused"]) for d in network.events("Disputed", rid)
    ]
    assert {disputer for disputer, accused in disputes if accused == editor} == honest
    # the editor, by the same rule, disputes the honest copies of its text: one vote each
    assert {disputer for disputer, accused in disputes if accused != editor} <= {editor}
    seat_of = {c["args"]["oracle"]: c["args"]["seat"] for c in network.events("Committed", rid)}
    assert seat_of[editor] not in result.cluster_seats
    assert INVISIBLE_MARK not in result.output
    (slash,) = network.events("Slashed", rid)
    assert (slash["args"]["oracle"], slash["args"]["reason"]) == (editor, 1)  # excluded


def test_an_answer_the_model_did_not_write_is_read_back_disputed_and_never_delivered(
    network: Network,
) -> None:
    """Under the exact first-word signal a node reveals the honest first word and a tail
    of its own, honestly embedded: its bits are the honest answers' (only the first word
    counts), so it sits in their cluster and would be delivered whenever its ticket wins
    the medoid's tie. The honest nodes read it back through the model with the request's
    seed, find words the model does not write there, and dispute it; excluded, it is
    slashed, and an honest answer is delivered."""
    from oracle.consensus.signal import FIRST_WORD_EXACT

    _time_to_read_back(network)
    network.start(3)
    network.start(1, "--test-fault", "rewritten-tail")
    network.local.wait_for_registration()
    result = network.ask(
        "Is 21 a prime number? Answer yes or no.",
        quorum=4,
        fee_wei=4 * 10**15,
        embedding_model=FIRST_WORD_EXACT,
    )
    assert result.finalized, result.phases
    rid = result.request_id
    rewriter = network.local.nodes[3].address
    honest = {network.local.nodes[i].address for i in range(3)}
    reveals = {r["args"]["oracle"]: r["args"] for r in network.events("Revealed", rid)}
    assert reveals[rewriter]["output"].endswith(REWRITTEN_TAIL)
    honest_outputs = {reveals[a]["output"] for a in honest}
    assert len(honest_outputs) == 1
    assert reveals[rewriter]["output"].split()[0] == honest_outputs.copy().pop().split()[0]
    # the same bits: neither the embedding check nor the cluster can tell it apart
    assert len({bytes(reveals[a]["embeddingBits"]) for a in reveals}) == 1
    disputes = [
        (d["args"]["disputer"], d["args"]["accused"]) for d in network.events("Disputed", rid)
    ]
    assert sorted(disputes) == sorted((a, rewriter) for a in honest)
    seat_of = {c["args"]["oracle"]: c["args"]["seat"] for c in network.events("Committed", rid)}
    assert seat_of[rewriter] not in result.cluster_seats
    assert result.output in honest_outputs
    (slash,) = network.events("Slashed", rid)
    assert (slash["args"]["oracle"], slash["args"]["reason"]) == (rewriter, 1)  # excluded


def test_two_hostile_nodes_of_different_kinds_at_once_cannot_stop_the_honest_answer(
    network: Network,
) -> None:
    """Five nodes at quorum 5: three honest, one answering something unrelated (honestly
    embedded), one lying about its embedding. The honest answer is delivered and paid; the
    lying embedding is disputed by a strict majority of the quorum, excluded and slashed;
    so is the unrelated answer, which the others read back through the model: it is not
    what the model writes for this request."""
    _time_to_read_back(network)
    network.start(3)
    network.start(1, "--test-fault", "unrelated-answer")
    network.start(1, "--test-fault", "wrong-embedding")
    network.local.wait_for_registration()
    unrelated, lying = (network.local.nodes[i].address for i in (3, 4))
    honest = [network.local.nodes[i].address for i in range(3)]
    stake = {
        a: network.coordinator().functions.oracles(a).call()[0] for a in [*honest, unrelated, lying]
    }
    requester = network.w3.eth.account.from_key(dev_private_key(0)).address
    fee = 5 * 10**15
    result = network.ask(
        PROMPT, quorum=5, fee_wei=fee, sec_percentage=0.6, max_time_ms=120_000, timeout_s=400
    )
    assert result.finalized, result.phases
    rid = result.request_id
    seat_of = {c["args"]["oracle"]: c["args"]["seat"] for c in network.events("Committed", rid)}
    assert set(seat_of) == {*honest, unrelated, lying}  # all five seated, none evicted

    # the honest answer: the cluster is the three honest seats, its medoid delivered
    assert sorted(result.cluster_seats) == sorted(seat_of[a] for a in honest)
    assert result.output != UNRELATED_ANSWER
    reveals = {r["args"]["oracle"]: r["args"]["output"] for r in network.events("Revealed", rid)}
    assert result.output in {reveals[a] for a in honest}
    assert network.consumer().functions.answers(rid).call() == [result.output, SMOL, True]

    # the lying embedding: disputed by the other four, a strict majority of five; the
    # unrelated answer: read back by the other four (the liar's own answer is honest)
    disputes = network.events("Disputed", rid)
    by_accused: dict[str, set[str]] = {}
    for d in disputes:
        by_accused.setdefault(d["args"]["accused"], set()).add(d["args"]["disputer"])
    assert by_accused == {lying: {*honest, unrelated}, unrelated: {*honest, lying}}
    slashes = {s["args"]["oracle"]: s["args"] for s in network.events("Slashed", rid)}
    assert {a: args["reason"] for a, args in slashes.items()} == {lying: 1, unrelated: 1}
    slash_bps = network.coordinator().functions.slashBps().call()  # unchanged since deployed
    for address in (lying, unrelated):  # both excluded
        assert slashes[address]["amount"] == stake[address] * slash_bps // 10_000 > 0
        assert network.coordinator().functions.oracles(address).call()[0] == (
            stake[address] - slashes[address]["amount"]
        )

    # the money, to the wei: fee / quorum to each honest node, the rest back to the requester
    start = request_block(network, rid)
    finalizer, prepay = network.finalizer_pay(rid)
    for address in [*honest, unrelated, lying]:
        paid = (10**15 if address in honest else 0) + (prepay if address == finalizer else 0)
        assert network.net_received(address, start) == paid
    for address in honest:
        assert network.coordinator().functions.oracles(address).call()[0] == stake[address]
    assert network.net_received(requester, start) == -(3 * 10**15 + prepay)


def test_unreachable_quorum_fails_and_refunds(network: Network) -> None:
    network.start(2)
    network.local.wait_for_registration()
    requester = network.w3.eth.account.from_key(dev_private_key(0)).address
    # one deadline no node can make, one quorum that two nodes cannot fill
    short = network.ask(PROMPT, quorum=2, max_time_ms=1000, wait=False)
    too_few = network.ask(PROMPT, quorum=3, max_time_ms=15_000, wait=False)
    start = request_block(network, short.request_id)
    for result in (short, too_few):
        follow_request(network.w3, network.coordinator(), result, start, timeout_s=180)
    assert short.failed and short.reason == "no commits", short.phases
    assert too_few.failed and too_few.reason == "no consensus", too_few.phases
    # both fees came back: what the requester lost is only the gas it paid itself
    assert network.net_received(requester, start) == 0
    _wait_until_idle(network, [0, 1])

    def rows() -> list[object]:
        return network.node_rows(0, "SELECT phase, skip_reason FROM requests ORDER BY id")

    # the listener records the outcome a block or so after the client saw it
    _wait_for(lambda: [r.phase for r in rows()] == ["failed", "failed"], timeout_s=30)
    assert "cannot finish before the commit deadline" in rows()[0].skip_reason


def test_two_models_serve_one_request(network: Network) -> None:
    network.start(2)
    network.start(1, "--model", GEMMA)
    network.local.wait_for_registration()
    result = network.ask(PROMPT, quorum=3, models=(SMOL, GEMMA), sec_percentage=0.6)
    assert result.finalized, result.phases
    reveals = _events(network, "Revealed", result)
    assert {r["args"]["modelIndex"] for r in reveals} == {0, 1}


def test_a_node_killed_after_its_commit_reveals_after_restart(network: Network) -> None:
    network.start(3)
    network.local.wait_for_registration()
    victim = network.local.nodes[0].address
    sent = network.ask(PROMPT, quorum=3, max_time_ms=60_000, wait=False)
    start = request_block(network, sent.request_id)
    _wait_for(lambda: victim in {c["args"]["oracle"] for c in _events(network, "Committed", sent)})
    network.local.kill_node(0)
    network.local.restart_node(0)
    follow_request(network.w3, network.coordinator(), sent, start, timeout_s=180)
    assert sent.finalized, sent.phases
    revealers = {r["args"]["oracle"] for r in _events(network, "Revealed", sent)}
    assert victim in revealers  # its salt survived the crash
    # one commit and one reveal, no second try after the restart; when the victim's seat
    # leads the winning cluster it is also the first to finalize, once
    sent_by_victim = network.txs_to_coordinator(victim, start)
    assert sorted(set(sent_by_victim)) in (["commit", "reveal"], ["commit", "finalize", "reveal"])
    assert all(sent_by_victim.count(kind) == 1 for kind in sent_by_victim)


def test_hostile_requests_end_with_reasons_and_the_node_keeps_serving(network: Network) -> None:
    network.start(1)
    network.local.wait_for_registration()
    coordinator = network.coordinator()
    owner = network.w3.eth.accounts[0]
    network.w3.eth.wait_for_transaction_receipt(
        coordinator.functions.setMaxPromptBytes(200_000).transact({"from": owner})
    )
    hostile = [
        network.ask(PROMPT, quorum=1, models=("no-such-model",), wait=False),
        network.ask("tell me more " * 5000, quorum=1, wait=False),
        network.ask(PROMPT, quorum=1, max_tokens=1_000_000, wait=False),
    ]
    with pytest.raises(RequestRejected, match="ZeroMaxTokens"):
        network.ask(PROMPT, quorum=1, max_tokens=0)
    # the next request, sent the way a newcomer would, still gets its answer
    healthy = subprocess.run(
        [sys.executable, "-m", "oracle.cli", "request", PROMPT, "--quorum", "1",
         "--rpc", network.anvil.url, "--contract", network.deployment.coordinator],
        env={**os.environ, "ORACLE_PRIVATE_KEY": dev_private_key(0)},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert healthy.returncode == 0, healthy.stderr
    assert healthy.stdout.strip().splitlines()[-1].startswith("finalized request=")
    ids = [h.request_id for h in hostile]
    _wait_for(lambda: all(r.skip_reason for r in _requests(network, ids)))
    reasons = [r.skip_reason for r in _requests(network, ids)]
    assert "none of the accepted models ['no-such-model']" in reasons[0]
    # declined at admission, before the prompt takes queue room or a worker's time
    assert "and the prompt (estimated at 21699 tokens) exceed the context" in reasons[1]
    assert "maxTokens 1000000 and the prompt (estimated at" in reasons[2]


# --- helpers -------------------------------------------------------------------------


def _events(network: Network, name: str, result: object) -> list[dict[str, object]]:
    request_id = result.request_id  # type: ignore[attr-defined]
    event = getattr(network.coordinator().events, name)()
    return list(event.get_logs(from_block=0, argument_filters={"requestId": request_id}))


def _requests(network: Network, ids: list[int]) -> list[object]:
    return network.node_rows(
        0, "SELECT id, phase, skip_reason FROM requests WHERE id = ANY(:ids) ORDER BY id", ids=ids
    )


def _wait_for(condition: object, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError("condition not met in time")


def _wait_until_idle(network: Network, indexes: list[int]) -> None:
    """Nothing left queued, running or unsent: no node hangs or retries forever."""

    def idle() -> bool:
        for index in indexes:
            jobs = network.node_rows(
                index, "SELECT count(*) FROM jobs WHERE status IN ('queued','running')"
            )
            txs = network.node_rows(
                index, "SELECT count(*) FROM outgoing_txs WHERE status IN ('pending','sent')"
            )
            if jobs[0][0] or txs[0][0]:
                return False
        return True

    _wait_for(idle, timeout_s=60)
