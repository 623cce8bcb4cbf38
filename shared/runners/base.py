"""The runner interface: how a device runs a model. The in-process tuner, the ORT agent, the TVM
agent and runtime plugins (`agent register --runtime module:factory`) all evaluate candidates
through it, so moving evaluation onto a device changes where it runs, not how.

Runner protocol (version `RUNNER_PROTOCOL`, documented for plugin authors in deploy/README.md):

* `info() -> RunnerInfo`: what measures (runtime, version, providers, options).
* `run(model, feeds) -> outputs`: `feeds` maps every model input name to an array with a leading
  sample axis (N, ...) of the input's dtype; the runner returns every model output for the N
  samples, each with the same leading axis, as a dict by output name or a list in the model's
  output order. Batching (and padding a fixed batch dimension) is the runner's business.
* optional `timers(models, sample)`: a context manager giving one `Timer` per model, all loaded
  at once (same device, same session options), each timing `n` consecutive batch-1 inferences
  of `sample` (one sample per input) when called as `timer(n)` and returning their seconds. The
  caller interleaves them (FP32 and candidate) so that machine noise cancels in their ratio.
  Without it, qfarm times `run(model, sample)` with a wall clock (`wall_timers`).

Raise `UnsupportedModel` when the runtime cannot load a model at all (an op it lacks), any other
`shared.errors.QfarmError` (e.g. EvaluationError) for a failure of this model on this device."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Mapping, Protocol, Sequence

import numpy as np

from shared.errors import EvaluationError, InvalidArgument
from shared.feeds import Feeds, num_samples

RUNNER_PROTOCOL = 2
Outputs = Mapping[str, np.ndarray] | Sequence[np.ndarray]
Timer = Callable[[int], Sequence[float]]


@dataclass(frozen=True)
class RunnerInfo:
    runtime: str                       # "onnxruntime", "tvm"
    version: str
    providers: tuple[str, ...] = ()
    options: str = ""                  # e.g. "graph_optimization=ORT_ENABLE_ALL threads=1"


class UnsupportedModel(EvaluationError):
    """The runtime cannot load this model at all (e.g. an op it lacks): status `unsupported`."""

    step = "unsupported"


class Runner(Protocol):
    def info(self) -> RunnerInfo: ...

    def run(self, model: Path, feeds: Feeds) -> Outputs:
        """Every output of `model` for the N samples of `feeds`, each (N, ...)."""


class TimingRunner(Runner, Protocol):
    def timers(self, models: Sequence[Path], sample: Feeds) -> ContextManager[Sequence[Timer]]:
        """One Timer per model, all ready at once, for batch-1 `sample`."""


def model_output_names(model: Path) -> list[str]:
    """The graph's output names in order (the names of a runner's list of outputs)."""
    import onnx

    try:
        graph = onnx.load(str(model), load_external_data=False).graph
    except Exception as exc:  # DecodeError / OSError for files that are not ONNX models
        raise EvaluationError(f"cannot read the outputs of {Path(model).name}: {exc}") from exc
    return [o.name for o in graph.output]


def named_outputs(model: Path, outputs: Outputs, samples: int) -> dict[str, np.ndarray]:
    """A runner's outputs as {output name: array (samples, ...)}, checked: a list is named after the
    model's outputs, and every output must keep the sample axis."""
    if isinstance(outputs, Mapping):
        named = {str(k): np.asarray(v) for k, v in outputs.items()}
    elif isinstance(outputs, Sequence) and not isinstance(outputs, (str, bytes, np.ndarray)):
        names = model_output_names(model)
        if len(names) != len(outputs):
            raise EvaluationError(f"the runner returned {len(outputs)} outputs for {Path(model).name}, "
                                  f"which has {len(names)} ({', '.join(names)})")
        named = {name: np.asarray(v) for name, v in zip(names, outputs)}
    else:
        raise EvaluationError(f"the runner returned a {type(outputs).__name__} for {Path(model).name}; "
                              "expected a dict or a list of output arrays")
    if not named:
        raise EvaluationError(f"the runner returned no outputs for {Path(model).name}")
    for name, array in named.items():
        if array.ndim == 0 or array.shape[0] != samples:
            raise EvaluationError(f"output {name!r} of {Path(model).name} has shape {list(array.shape)}; "
                                  f"expected a leading sample axis of {samples}")
    return named


def run_outputs(runner: Runner, model: Path, feeds: Feeds) -> dict[str, np.ndarray]:
    """`runner.run`, its outputs named and checked."""
    samples = num_samples(feeds)
    return named_outputs(model, runner.run(Path(model), feeds), samples)


@contextmanager
def wall_timers(runner: Runner, models: Sequence[Path], sample: Feeds) -> Iterator[list[Timer]]:
    """Timers for a runner without its own: `run(model, sample)` under a wall clock."""
    def timer_for(model: Path) -> Timer:
        def timed(n: int) -> list[float]:
            out = []
            for _ in range(n):
                start = time.perf_counter()
                runner.run(model, sample)
                out.append(time.perf_counter() - start)
            return out
        return timed

    yield [timer_for(Path(m)) for m in models]


def timers_of(runner: Runner, models: Sequence[Path], sample: Feeds) -> ContextManager[Sequence[Timer]]:
    """The runner's own timers when it has them, else wall-clock timers over `run`."""
    own = getattr(runner, "timers", None)
    return own([Path(m) for m in models], sample) if own is not None else wall_timers(runner, models, sample)


def check_runner(runner: object, where: str) -> Runner:
    """A clear error when a plugin's factory returns something that does not speak the protocol."""
    missing = [name for name in ("info", "run") if not callable(getattr(runner, name, None))]
    if missing:
        raise InvalidArgument(f"{where} returned a {type(runner).__name__} without {', '.join(missing)}(): "
                              f"runners speak qfarm runner protocol {RUNNER_PROTOCOL} (run(model, feeds) -> "
                              f"outputs; see deploy/README.md)")
    return runner  # type: ignore[return-value]
