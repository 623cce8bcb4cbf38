"""Progress without a terminal (CI logs, pipes): one line per stage and one per batch of results,
instead of a progress bar redrawn per result."""
from __future__ import annotations

from typing import Callable

from coordinator.tune import TuneEvents
from shared.results import DeviceResult


def line_events(say: Callable[[str], None], devices: int = 1) -> TuneEvents:
    """TuneEvents that print a line when a stage starts and when a planned batch (candidates x device
    classes) has all its results."""
    state = {"planned": 0, "done": 0, "batch": 0, "batch_done": 0, "failed": 0, "first_failure": ""}

    def on_stage(stage: str) -> None:
        say(f"{stage}")

    def on_plan(total: int) -> None:
        if total > 0:
            state["planned"] += total * devices
            state["batch"] = total * devices
            state["batch_done"] = 0

    def on_result(cid: str, device: str, result: DeviceResult) -> None:
        state["done"] += 1
        state["batch_done"] += 1
        if not result.ok:
            state["failed"] += 1
            state["first_failure"] = state["first_failure"] or \
                f"; {cid[:10]} on {device}: {result.status.value} ({result.crash_cause})"
        if state["batch_done"] == state["batch"] or state["done"] >= state["planned"]:
            failed = f", {state['failed']} failed{state['first_failure']}" if state["failed"] else ""
            say(f"  results {state['done']}/{state['planned']}{failed}")
            state["batch_done"], state["failed"], state["first_failure"] = 0, 0, ""

    return TuneEvents(on_stage=on_stage, on_plan=on_plan, on_result=on_result)
