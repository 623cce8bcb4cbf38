"""Unhealthy TVM devices and the TVM agent's device slots: a health record with an injected clock,
and real RPC servers under a real tracker, reached through TCP relays the test cuts (the server
stays registered, as a phone on a flaky Wi-Fi link does)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from agent.runners.tvm import TvmConfig, TvmEvent, TvmRunner
from agent.runners.tvm_health import HEALTH_FILE, DeviceHealth, HealthPolicy
from agent.tvm_tracker import DeviceCounts, DeviceSlots, TrackerAddress, TvmTracker, free_port, jobs_for
from coordinator.data import Preprocess, list_images, load_batch
from shared.errors import InvalidArgument
from tests.farm_support import ROOT
from tests.models import make_classifier

KEY = "flaky-phone"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_consecutive_failures_quarantine_a_device_and_a_success_clears_it(tmp_path):
    clock = Clock()
    health = DeviceHealth(tmp_path / HEALTH_FILE, HealthPolicy(unhealthy_after=3, quarantine_s=60), clock)
    assert not health.failed(KEY, "10.0.0.5:9090", "socket closed")
    assert not health.failed(KEY, "10.0.0.5:9090")
    assert not health.is_unhealthy(KEY, "10.0.0.5:9090")
    assert health.failed(KEY, "10.0.0.5:9090", "connection reset")        # the third in a row
    assert health.is_unhealthy(KEY, "10.0.0.5:9090")
    assert not health.is_unhealthy(KEY, "10.0.0.6:9090")                  # per address
    assert not health.is_unhealthy("other-key", "10.0.0.5:9090")          # and per key
    other_process = DeviceHealth(tmp_path / HEALTH_FILE, HealthPolicy(3, 60), clock)   # shared through the file
    assert other_process.is_unhealthy(KEY, "10.0.0.5:9090")
    record = other_process.records()[f"{KEY}@10.0.0.5:9090"]
    assert (record.failures, record.unhealthy_until, record.last_error) == (3, 1060.0, "connection reset")

    clock.now += 61                                                       # quarantine over: probation
    assert not health.is_unhealthy(KEY, "10.0.0.5:9090")
    assert health.failed(KEY, "10.0.0.5:9090")                            # one more failure is enough
    assert health.records()[f"{KEY}@10.0.0.5:9090"].unhealthy_until == clock.now + 60
    health.succeeded(KEY, "10.0.0.5:9090")
    assert health.records() == {}
    assert not health.failed(KEY, "10.0.0.5:9090")                        # counting starts over


def test_a_damaged_health_file_costs_only_the_history(tmp_path):
    (tmp_path / HEALTH_FILE).write_text("{not json")
    health = DeviceHealth(tmp_path / HEALTH_FILE, HealthPolicy(unhealthy_after=1))
    assert health.records() == {}
    assert health.failed(KEY, "10.0.0.5:9090")
    assert health.is_unhealthy(KEY, "10.0.0.5:9090")


def test_health_policy_and_options_reject_bad_values(tmp_path):
    with pytest.raises(InvalidArgument, match="unhealthy_after 0"):
        HealthPolicy(unhealthy_after=0)
    with pytest.raises(InvalidArgument, match="quarantine -1"):
        TvmConfig(rpc_key=KEY, quarantine=-1, cache_dir=tmp_path)


def test_jobs_follow_free_devices_and_never_exceed_devices():
    assert jobs_for(DeviceCounts(free=2, busy=0), running=0) == 2
    assert jobs_for(DeviceCounts(free=2, busy=0), running=1) == 1    # a compiling job holds no device yet
    assert jobs_for(DeviceCounts(free=1, busy=1), running=1) == 1    # ours is on the busy one
    assert jobs_for(DeviceCounts(free=1, busy=1), running=0) == 1    # someone else's session
    assert jobs_for(DeviceCounts(free=0, busy=2), running=2) == 0
    assert jobs_for(DeviceCounts(free=0, busy=0), running=0) == 0


# ------------------------------------------------------------------------------ real devices
class Phone:
    """`python -m tvm.exec.rpc_server` registered under KEY at 127.0.0.2:PORT, reached through a
    tests.tcp_relay process (its Wi-Fi). A cut link looks to the server like a client that went
    away, so it registers again, as a phone's RPC app does."""

    def __init__(self, tracker: TvmTracker):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", str(tracker.address), "--key", KEY,
             "--host", "127.0.0.1", "--port", str(self.port), "--port-end", str(self.port + 1),
             "--custom-addr", "127.0.0.2", "--silent"],
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.relay = subprocess.Popen(
            [sys.executable, "-m", "tests.tcp_relay", "127.0.0.2", str(self.port), "127.0.0.1", str(self.port)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.relay.stdout.readline().strip() == "ready"

    @property
    def address(self) -> str:
        return f"127.0.0.2:{self.port}"

    def cut_link(self) -> int:
        """Drop the open connections now (returns how many were open)."""
        self.relay.send_signal(signal.SIGUSR1)
        return int(self.relay.stdout.readline().split()[1])

    def stop(self) -> None:
        self.relay.kill()
        self.relay.wait(10)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.proc.wait(10)


@pytest.fixture(scope="module")
def tracker() -> Iterator[TvmTracker]:
    # the health record above needs no TVM; the tracker and phones do
    pytest.importorskip("tvm", reason="the TVM extra is not installed (pip install '.[tvm]')")
    with TvmTracker.start(port=0) as started:
        yield started


@pytest.fixture(scope="module")
def phones(tracker) -> Iterator[list[Phone]]:
    """Two phones; the first registers first, so the tracker hands it out first."""
    started: list[Phone] = []
    try:
        for count in (1, 2):
            started.append(Phone(tracker))
            tracker.wait_for_devices(KEY, count, timeout=60, free=True)
        yield started
    finally:
        for phone in started:
            phone.stop()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, images_dir) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("health")
    model = make_classifier(root / "tiny.onnx", size=16, classes=10)
    x = load_batch(list_images(images_dir).subset(list(range(8))), Preprocess(input_size=16))
    return model, x


def runner(tracker: TvmTracker, cache: Path, on_event, **kw) -> TvmRunner:
    return TvmRunner(TvmConfig(rpc_key=KEY, target={"kind": "llvm"}, tracker_port=tracker.address.port,
                               cache_dir=cache, chunk=4, backoff=0.0, **kw), on_event=on_event)


def test_a_device_that_drops_its_sessions_is_marked_unhealthy_and_skipped(tracker, phones, setup, tmp_path):
    model, x = setup
    by_address = {p.address: p for p in phones}
    events: list[TvmEvent] = []

    def drop_first_session(event: TvmEvent) -> None:
        events.append(event)
        if event.kind == "chunk" and event.attempt == 1:
            serving = [e.device for e in events if e.kind == "session"][-1]
            assert by_address[serving].cut_link() == 1      # the Wi-Fi drops mid-run

    first = runner(tracker, tmp_path, drop_first_session, unhealthy_after=1, quarantine=600)
    first.run(model, {"input": x})
    sessions = [e.device for e in events if e.kind == "session"]
    assert len(sessions) == 2 and sessions[0] != sessions[1]
    flaky, healthy = sessions
    records = first.health.records()
    assert list(records) == [f"{KEY}@{flaky}"] and records[f"{KEY}@{flaky}"].failures == 1
    assert first.health.is_unhealthy(KEY, flaky)
    tracker.wait_for_devices(KEY, 2, timeout=30, free=True)    # the dropped server registered again

    events.clear()
    second = runner(tracker, tmp_path, events.append, unhealthy_after=1, quarantine=600)
    logits = second.run(model, {"input": x})["logits"]
    assert logits.shape == (8, 10)
    assert [(e.kind, e.device) for e in events if e.kind in ("skipped", "session")] == \
        [("skipped", flaky), ("session", healthy)]             # the tracker offered the flaky one first
    assert tracker.wait_for_devices(KEY, 2, timeout=30, free=True) == (2, 0)   # the skipped one was given back
    assert second.health.is_unhealthy(KEY, flaky)
    assert f"{KEY}@{healthy}" not in second.health.records()


def test_when_only_unhealthy_devices_are_free_one_of_them_is_used(tracker, phones, setup, tmp_path):
    model, x = setup
    health = DeviceHealth(tmp_path / HEALTH_FILE, HealthPolicy(unhealthy_after=1))
    for phone in phones:
        health.failed(KEY, phone.address, "test: marked")
    events: list[TvmEvent] = []
    start = time.monotonic()
    runner(tracker, tmp_path, events.append, unhealthy_after=1).run(model, {"input": x[:4]})
    skipped = [e.device for e in events if e.kind == "skipped"]
    [used] = [e.device for e in events if e.kind == "session"]
    assert len(skipped) == 1 and used != skipped[0] and used in {p.address for p in phones}
    assert time.monotonic() - start < 30
    assert not health.is_unhealthy(KEY, used) and health.is_unhealthy(KEY, skipped[0])   # it worked: cleared


def test_device_slots_follow_the_tracker_and_count_a_dead_tracker_as_no_devices(phones, tracker):
    tracker.wait_for_devices(KEY, 2, timeout=30, free=True)       # earlier sessions have ended
    slots = DeviceSlots(tracker, KEY, poll_s=0.05)
    slots.start()
    try:
        assert slots.counts == (2, 0) and slots.available(running=0) == 2
        session, where = tracker.request(KEY, session_timeout=30, timeout=10)
        deadline = time.monotonic() + 10
        while slots.counts != (1, 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slots.counts == (1, 1) and slots.available(running=1) == 1
        del session
    finally:
        slots.close()
    dead = DeviceSlots(TvmTracker(TrackerAddress("127.0.0.1", free_port())), KEY)
    assert dead.refresh() == (0, 0) and dead.available(running=0) == 0
