"""The runner interface: how a device runs a model. The in-process tuner, the ORT agent, the TVM
agent and runtime plugins (`agent register --runtime module:factory`) all evaluate candidates
through it, so moving evaluation onto a device changes where it runs, not how.

Runner protocol (version `RUNNER_PROTOCOL`, documented for plugin authors in deploy/README.md):

* `info() -> RunnerInfo`: what measures (runtime, version, providers, options).
* `run(model, feeds) -> outputs`: `feeds` maps every model input name to an array with a leading
  sample axis (N, ...) of the input's dtype; the runner returns every model output for the N
  samples, each with the same leading axis, as a dict by output name or a list in the model's
  output order. Batching (and padding a fixed batch dimension) is the runner's business.
* optional `run_feed(model, feed) -> outputs`: ONE inference on `feed`, every input exactly as the
  model takes it (any rank, 0-d scalars included, the batch wherever the model has it), and that
  inference's outputs as they come (no sample axis added). Whole-feed datasets (shared/feeds.py)
  are run through it, one feed per sample; a runner without it cannot run them (`unsupported`).
* optional `timers(models, sample)`: a context manager giving one `Timer` per model, all loaded
  at once (same device, same session options), each timing `n` consecutive batch-1 inferences
  of `sample` (one sample per input) when called as `timer(n)` and returning their seconds. The
  caller interleaves them (FP32 and candidate) so that machine noise cancels in their ratio.
  Without it, qfarm times `run(model, sample)` with a wall clock (`wall_timers`).
* optional `feed_timers(models, feed)`: the same for one whole feed, timed exactly as given;
  without it, qfarm times `run_feed(model, feed)` with a wall clock.

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
from shared.feeds import BATCHED, Feeds, check_layout, feed_at, num_samples

RUNNER_PROTOCOL = 3
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


def run_outputs(runner: Runner, model: Path, feeds: Feeds, layout: str = BATCHED) -> dict[str, np.ndarray]:
    """Every output for every sample, named and checked: `runner.run` on batched feeds; one
    `runner.run_feed` per sample on whole feeds, each output stacked along a new sample axis."""
    samples = num_samples(feeds)
    if check_layout(layout) == BATCHED:
        return named_outputs(model, runner.run(Path(model), feeds), samples)
    run_feed = feed_runner(runner)
    per_sample = [named_outputs(model, _with_sample_axis(run_feed(Path(model), feed_at(feeds, i, layout))), 1)
                  for i in range(samples)]
    names = list(per_sample[0])
    for i, outputs in enumerate(per_sample):
        if list(outputs) != names:
            raise EvaluationError(f"feed {i} of {Path(model).name} gave outputs {', '.join(outputs)}; the first "
                                  f"gave {', '.join(names)}")
        for name in names:
            if outputs[name].shape != per_sample[0][name].shape:
                raise EvaluationError(f"output {name!r} of {Path(model).name} is {list(outputs[name].shape[1:])} for "
                                      f"feed {i} but {list(per_sample[0][name].shape[1:])} for feed 0: outputs of "
                                      "whole feeds must have one shape to be compared")
    return {name: np.concatenate([outputs[name] for outputs in per_sample]) for name in names}


def _with_sample_axis(outputs: Outputs) -> Outputs:
    """One inference's outputs with a sample axis of 1 in front (so named_outputs can check them)."""
    if isinstance(outputs, Mapping):
        return {name: np.asarray(value)[None] for name, value in outputs.items()}
    if isinstance(outputs, Sequence) and not isinstance(outputs, (str, bytes, np.ndarray)):
        return [np.asarray(value)[None] for value in outputs]
    return outputs                     # named_outputs names what is wrong with it


def feed_runner(runner: Runner) -> Callable[[Path, Feeds], Outputs]:
    """The runner's `run_feed`; a runner without it cannot run whole-feed datasets."""
    run_feed = getattr(runner, "run_feed", None)
    if not callable(run_feed):
        info = runner.info()
        raise UnsupportedModel(f"runtime {info.runtime} {info.version} has no run_feed(model, feed): it cannot run "
                               "whole-feed datasets (one complete feed per inference); use --data-layout batched "
                               f"data or a runner of qfarm runner protocol {RUNNER_PROTOCOL}")
    return run_feed


@contextmanager
def wall_timers(runner: Runner, models: Sequence[Path], sample: Feeds, layout: str = BATCHED) -> Iterator[list[Timer]]:
    """Timers for a runner without its own: `run(model, sample)` (`run_feed` for a whole feed)
    under a wall clock."""
    run = runner.run if layout == BATCHED else feed_runner(runner)

    def timer_for(model: Path) -> Timer:
        def timed(n: int) -> list[float]:
            out = []
            for _ in range(n):
                start = time.perf_counter()
                run(model, sample)
                out.append(time.perf_counter() - start)
            return out
        return timed

    yield [timer_for(Path(m)) for m in models]


def timers_of(runner: Runner, models: Sequence[Path], sample: Feeds,
              layout: str = BATCHED) -> ContextManager[Sequence[Timer]]:
    """The runner's own timers when it has them (`timers` for a batch-1 sample, `feed_timers`
    for one whole feed), else wall-clock timers over `run` / `run_feed`."""
    own = getattr(runner, "timers" if check_layout(layout) == BATCHED else "feed_timers", None)
    paths = [Path(m) for m in models]
    return own(paths, sample) if own is not None else wall_timers(runner, paths, sample, layout)


def check_runner(runner: object, where: str) -> Runner:
    """A clear error when a plugin's factory returns something that does not speak the protocol."""
    missing = [name for name in ("info", "run") if not callable(getattr(runner, name, None))]
    if missing:
        raise InvalidArgument(f"{where} returned a {type(runner).__name__} without {', '.join(missing)}(): "
                              f"runners speak qfarm runner protocol {RUNNER_PROTOCOL} (run(model, feeds) -> "
                              f"outputs; see deploy/README.md)")
    return runner  # type: ignore[return-value]
