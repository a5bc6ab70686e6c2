"""The lifecycle's table of transitions holds together and matches the stored phases."""

from __future__ import annotations

import inspect
from collections.abc import Iterable

from oracle.domain.events import FailedEvent, FinalizedEvent, RequestedEvent
from oracle.lifecycle import transitions
from oracle.lifecycle.steps import FOLLOWED, INITIAL, TERMINAL, TRANSITIONS
from oracle.store.models import OPEN_REQUEST_PHASES, REQUEST_PHASES

CHAIN_EVENTS = {e.event_name for e in (RequestedEvent, FinalizedEvent, FailedEvent)}


def reachable(starts: Iterable[str]) -> set[str]:
    seen = set(starts)
    frontier = list(seen)
    while frontier:
        state = frontier.pop()
        for t in TRANSITIONS:
            if t.source == state:
                for target in t.targets:
                    if target not in seen:
                        seen.add(target)
                        frontier.append(target)
    return seen


def test_the_states_are_the_stored_phases() -> None:
    in_table = {t.source for t in TRANSITIONS} | {s for t in TRANSITIONS for s in t.targets}
    assert in_table == set(REQUEST_PHASES)
    assert set(INITIAL) | set(TERMINAL) <= set(REQUEST_PHASES)
    assert set(OPEN_REQUEST_PHASES) <= set(FOLLOWED)


def test_every_state_is_reachable_from_a_stored_request() -> None:
    assert reachable(INITIAL) == set(REQUEST_PHASES)


def test_terminal_states_have_no_way_out_and_every_other_state_has_one() -> None:
    sources = {t.source for t in TRANSITIONS}
    assert not sources & set(TERMINAL)
    assert sources == set(REQUEST_PHASES) - set(TERMINAL)


def test_every_node_transition_is_a_function_of_the_transitions_module() -> None:
    for t in (t for t in TRANSITIONS if t.run is not None):
        assert inspect.isfunction(t.run), t
        assert getattr(transitions, t.run.__name__) is t.run, t
        assert list(inspect.signature(t.run).parameters) == ["step", "seats"], t
        assert t.targets, t


def test_node_transitions_only_act_or_move_forward() -> None:
    """A node row never leads back: the driver's chain of moves in one look must end."""
    forward = ("requested", "committing", "revealing", "finalizing", "skipped", "evicted")
    rank = {state: i for i, state in enumerate(forward)}
    for t in (t for t in TRANSITIONS if t.run is not None):
        for target in t.targets:
            assert rank[target] >= rank[t.source], t


def test_chain_transitions_name_the_chain_event_that_makes_them() -> None:
    for t in (t for t in TRANSITIONS if t.run is None):
        named = t.event.split(":")[0]
        assert named in CHAIN_EVENTS or named == "reorg", t
    settled = {t.source for t in TRANSITIONS if t.event == FinalizedEvent.event_name}
    assert set(FOLLOWED) <= settled, "every state this node follows can be settled on-chain"


def test_each_state_runs_its_steps_in_one_place() -> None:
    """No function is listed twice for one state: the table is the one order of steps."""
    rows = [(t.source, t.run) for t in TRANSITIONS if t.run is not None]
    assert len(rows) == len(set(rows))
