"""Agents described for people (`coordinator status`, the dashboard): slots and runtime as text."""
from __future__ import annotations


def slots_text(agent) -> str:
    """Free/busy as the agent reports them: job slots, or for a TVM agent the devices of its key."""
    what = " devices" if agent.capabilities.runtime.runtime == "tvm" else ""
    return f"{agent.free_slots} free / {agent.busy_slots} busy{what}"


def runtime_text(runtime) -> str:
    """Runtime and version; for TVM also the key and tracker its devices register with."""
    text = f"{runtime.runtime} {runtime.version}"
    if runtime.runtime == "tvm":
        fields = dict(item.split("=", 1) for item in runtime.options.split() if "=" in item)
        text += "".join(f" {k}={fields[k]}" for k in ("key", "tracker") if k in fields)
    return text
