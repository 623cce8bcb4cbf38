"""Which runtime an agent measures with (`--runtime ort|tvm`), as a plain, serialisable value.

The agent process and its per-job child process both build the runner from the same
`RuntimeOptions`, so what the coordinator is told at registration is what the child runs.
A runtime is a factory `module:function` taking RuntimeOptions and returning a Runner; TVM's
lives in agent.runners.tvm and is imported only when asked for. `--runtime module:function` names
a factory outside qfarm (a vendor SDK's runner, or a test's device that lacks a kernel); the runner
it returns speaks the protocol of shared/runners/base.py (documented in deploy/README.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from shared.errors import InvalidArgument
from shared.plugins import PluginNotFound, import_function, is_function_path
from shared.runners.base import Runner, check_runner

FACTORIES = {
    "ort": "agent.runtimes:ort_runner",
    "tvm": "agent.runners.tvm:runner_from_options",
}


@dataclass(frozen=True)
class RuntimeOptions:
    runtime: str = "ort"
    threads: int = 1                     # intra-op threads per job (0 = the runtime's default)
    optimization: str = "all"            # ORT graph optimization level
    extra: Mapping[str, str] = field(default_factory=dict)   # runtime-specific (TVM target, tracker, ...)
    disabled_optimizers: tuple[str, ...] = ()   # ORT graph optimizers this device runs without

    def __post_init__(self) -> None:
        if self.runtime not in FACTORIES and not is_function_path(self.runtime):
            raise InvalidArgument(f"--runtime {self.runtime!r} is not one of {', '.join(FACTORIES)} "
                                  "nor a factory as module:function", step="agent")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise InvalidArgument(f"--threads {self.threads!r} must be an integer >= 0", step="agent")
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))
        if self.disabled_optimizers:
            from shared.runners.ort import check_optimizer_names

            if self.runtime != "ort":
                raise InvalidArgument(f"--ort-disable-optimizers applies to --runtime ort, not {self.runtime!r}",
                                      step="agent")
            object.__setattr__(self, "disabled_optimizers", check_optimizer_names(self.disabled_optimizers))

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "threads": self.threads, "optimization": self.optimization,
                "extra": dict(self.extra), "disabled_optimizers": list(self.disabled_optimizers)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RuntimeOptions":
        return cls(runtime=data["runtime"], threads=int(data["threads"]), optimization=data["optimization"],
                   extra=dict(data.get("extra", {})), disabled_optimizers=tuple(data.get("disabled_optimizers", ())))


def make_runner(options: RuntimeOptions) -> Runner:
    """Build the runner; a runtime whose module is missing is a clear error, not an ImportError."""
    path = FACTORIES.get(options.runtime, options.runtime)
    try:
        factory = import_function(path)
    except PluginNotFound as exc:
        raise InvalidArgument(f"runtime {options.runtime!r} is not available here ({path}: {exc})",
                              step="agent") from exc
    return check_runner(factory(options), f"runtime {options.runtime!r}")


def ort_runner(options: RuntimeOptions) -> Runner:
    from shared.runners.ort import OrtRunner

    return OrtRunner(ort_config(options))


def ort_config(options: RuntimeOptions):
    """The onnxruntime session options an agent's RuntimeOptions stand for."""
    from shared.runners.ort import OrtConfig

    return OrtConfig(optimization=options.optimization, intra_op_threads=options.threads,
                     disabled_optimizers=options.disabled_optimizers)
