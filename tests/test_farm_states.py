"""Agent/job/campaign lifecycles: the allowed moves, and that the store refuses the others
atomically (nothing of a refused change is written)."""
from __future__ import annotations

import pytest

from coordinator.farm.states import (TRANSITIONS, AgentState, CampaignState, JobState, is_alive,
                                     require_transition)
from coordinator.farm.store import Store
from shared.errors import FailedPrecondition


@pytest.mark.parametrize("current,target", [
    (None, AgentState.IDLE), (AgentState.IDLE, AgentState.BUSY), (AgentState.BUSY, AgentState.MISSING),
    (AgentState.MISSING, AgentState.EVICTED), (AgentState.MISSING, AgentState.BUSY), (AgentState.IDLE, AgentState.GONE),
    (None, JobState.QUEUED), (JobState.QUEUED, JobState.LEASED), (JobState.LEASED, JobState.QUEUED),
    (JobState.LEASED, JobState.DONE), (JobState.QUEUED, JobState.DONE), (JobState.CANCELLED, JobState.QUEUED),
    (CampaignState.QUEUED, CampaignState.RUNNING), (CampaignState.RUNNING, CampaignState.FAILED),
])
def test_allowed_moves(current, target):
    assert require_transition(current, target) is target


@pytest.mark.parametrize("current,target", [
    (None, AgentState.BUSY), (AgentState.EVICTED, AgentState.IDLE), (AgentState.GONE, AgentState.BUSY),
    (AgentState.IDLE, AgentState.EVICTED),            # eviction always passes through missing
    (None, JobState.LEASED), (JobState.DONE, JobState.QUEUED), (JobState.DONE, JobState.LEASED),
    (JobState.CANCELLED, JobState.LEASED),
    (CampaignState.DONE, CampaignState.RUNNING), (CampaignState.FAILED, CampaignState.DONE),
])
def test_illegal_moves_raise_naming_both_states(current, target):
    with pytest.raises(FailedPrecondition) as info:
        require_transition(current, target, what="x1")
    text = str(info.value)
    assert "x1" in text and target.value in text and (current.value if current else "(new)") in text


def test_every_state_has_a_row_and_terminal_states_are_final():
    for enum in (AgentState, JobState, CampaignState):
        assert set(TRANSITIONS[enum]) == {None, *enum}
    assert TRANSITIONS[AgentState][AgentState.EVICTED] == frozenset()
    assert TRANSITIONS[JobState][JobState.DONE] == frozenset()
    assert [s for s in AgentState if is_alive(s)] == [AgentState.IDLE, AgentState.BUSY, AgentState.MISSING]


def test_mixing_enums_is_a_type_error():
    with pytest.raises(TypeError):
        require_transition(JobState.QUEUED, AgentState.IDLE)


def test_store_refuses_illegal_move_and_rolls_back(tmp_path):
    store = Store(tmp_path)
    try:
        assert store.journal_mode() == "wal"
        with store.transaction() as c:
            c.insert_job("j", "cpu", "candidate", "cand", b"", 0, 1.0)
            c.set_job_state("j", JobState.LEASED, 2.0, agent_id="a", lease_deadline=9.0, attempt=1)
            c.set_job_state("j", JobState.DONE, 3.0)
        with pytest.raises(FailedPrecondition, match="done to queued"):
            with store.transaction() as c:
                c.insert_job("k", "cpu", "candidate", "cand2", b"", 0, 4.0)   # part of the refused unit
                c.set_job_state("j", JobState.QUEUED, 4.0)
        with store.transaction() as c:
            job = c.job("j")
            assert (job.state, job.agent_id, job.lease_deadline, job.attempt) == (JobState.DONE, None, None, 1)
            assert c.job("k") is None                                         # rolled back with it
    finally:
        store.close()


def test_state_survives_reopening_the_data_dir(tmp_path):
    store = Store(tmp_path)
    with store.transaction() as c:
        c.insert_campaign("c1", "demo", "{}", 1.0)
        c.set_campaign_state("c1", CampaignState.RUNNING, "working", 2.0)
    store.close()
    again = Store(tmp_path)
    try:
        with again.transaction() as c:
            row = c.campaign("c1")
        assert (row.state, row.message) == (CampaignState.RUNNING, "working")
    finally:
        again.close()
