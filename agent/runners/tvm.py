"""TVM runner: compile a candidate with Relax for the device class's target, then run it on a device
that registered with the agent's RPC tracker (a phone's TVM RPC app, or `tvm.exec.rpc_server`).

Phones drop off Wi-Fi: a lost session is retried on a fresh tracker request (possibly another device
under the same key), resuming at the chunk that failed, with exponential backoff. A device whose
sessions keep failing is marked unhealthy (agent.runners.tvm_health) and skipped while another
device of the key is free. `on_event` is called after each chunk and during backoff waits so the
caller can keep its job lease alive."""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import onnx

from agent.runners.tvm_compile import (BuildSpec, CompiledLibrary, LibraryCache, bind_inputs, file_sha256,
                                       input_specs, unsupported_ops)
from agent.runners.tvm_health import HEALTH_FILE, DeviceHealth, HealthPolicy
from shared.feeds import Feeds, num_samples
from shared.runners.base import RunnerInfo, Timer, UnsupportedModel
from agent.tvm_tracker import DeviceUnreachable, TrackerAddress, TvmTracker
from shared.errors import DataError, EvaluationError, InvalidArgument, QfarmError

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qfarm" / "tvm"
# TVM target kind -> RPCSession method giving that device.
DEVICE_API = {"llvm": "cpu", "c": "cpu", "opencl": "cl", "vulkan": "vulkan", "cuda": "cuda",
              "metal": "metal", "rocm": "rocm", "webgpu": "webgpu"}
KEEPALIVE_SLICE = 5.0      # longest sleep between on_event calls while backing off
MAX_SKIPS = 3              # unhealthy devices passed over per session request
SKIP_REQUEST_TIMEOUT = 5.0  # wait for another device while holding an unhealthy one


def canonical_target(value: Mapping[str, Any] | str | None, what: str) -> str | None:
    """One JSON text per target dict (sorted keys); a JSON string is accepted. TVM itself validates
    the dict when a TvmRunner is built."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"{what} {value!r} is not JSON: {exc.msg}") from exc
    if not isinstance(value, Mapping) or "kind" not in value:
        raise InvalidArgument(f"{what} {value!r} must be a TVM target dict with a 'kind', "
                              f"e.g. {{\"kind\": \"opencl\", \"device\": \"mali\"}}")
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _mtriples(target: Mapping[str, Any]) -> list[str]:
    found = [str(target.get("mtriple", ""))]
    if isinstance(target.get("host"), Mapping):
        found += _mtriples(target["host"])
    return found


@dataclass(frozen=True)
class TvmConfig:
    """One TVM device class: what to compile for and where its devices register."""

    rpc_key: str                                   # devices register under it (e.g. "mali-g68")
    target: Mapping[str, Any] | str = field(default_factory=lambda: {"kind": "llvm"})
    host: Mapping[str, Any] | str | None = None    # e.g. {"kind":"llvm","mtriple":"aarch64-linux-android"}
    tracker_host: str = "127.0.0.1"
    tracker_port: int = 9190
    session_timeout: float = 600.0                 # the device ends a session older than this
    request_timeout: float = 120.0                 # longest wait for a free device of rpc_key
    chunk: int = 8                                 # images per remote call (the compiled batch)
    retries: int = 3                               # fresh sessions after a dropped one
    backoff: float = 2.0                           # seconds before the 1st retry, doubled each time
    ndk_cc: str | None = None                      # NDK clang; falls back to $TVM_NDK_CC
    cache_dir: Path = DEFAULT_CACHE                # compiled libraries and the device health record
    unhealthy_after: int = 3                       # consecutive session failures before a device is skipped
    quarantine: float = 600.0                      # seconds an unhealthy device is skipped

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", canonical_target(self.target, "TVM target"))
        object.__setattr__(self, "host", canonical_target(self.host, "TVM host target"))
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        if not self.rpc_key or any(c.isspace() or c == ":" for c in self.rpc_key):
            raise InvalidArgument(f"rpc key {self.rpc_key!r} must be non-empty, without spaces or ':'")
        if not 0 < self.tracker_port < 65536:
            raise InvalidArgument(f"tracker port {self.tracker_port} must be 1..65535")
        if self.chunk < 1:
            raise InvalidArgument(f"chunk {self.chunk} must be >= 1")
        if self.retries < 0:
            raise InvalidArgument(f"retries {self.retries} must be >= 0")
        if self.backoff < 0:
            raise InvalidArgument(f"backoff {self.backoff} must be >= 0 seconds")
        for name in ("session_timeout", "request_timeout"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"{name} {getattr(self, name)} must be > 0 seconds")
        HealthPolicy(self.unhealthy_after, self.quarantine)   # validates both

    @property
    def target_dict(self) -> dict[str, Any]:
        return json.loads(self.target)

    @property
    def host_dict(self) -> dict[str, Any] | None:
        return json.loads(self.host) if self.host else None

    @property
    def is_android(self) -> bool:
        triples = _mtriples(self.target_dict) + (_mtriples(self.host_dict) if self.host else [])
        return any("android" in t for t in triples)


@dataclass(frozen=True)
class TvmEvent:
    """Progress of one run or timing call, for lease keep-alive and logs."""

    kind: str             # compiled | skipped | session | chunk | retry | waiting
    attempt: int          # 1 for the first session, 2 after the first retry...
    done: int = 0         # images finished (chunk events)
    total: int = 0
    device: str = ""      # host:port of the device (session, skipped and retry events)
    detail: str = ""


class _HookFailed(Exception):
    """The caller's on_event raised (e.g. its lease is gone): abort, never retry."""


def _hook_errors_as_is(method: Callable[..., T]) -> Callable[..., T]:
    """Public methods re-raise what the caller's on_event raised, unchanged."""
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except _HookFailed as exc:
            raise exc.__cause__ from None  # type: ignore[misc]
    return wrapper


class _SessionLost(Exception):
    """The RPC session or the device went away: worth a fresh session."""


@dataclass
class _Remote:
    session: Any
    device: Any
    vms: list[Any] = field(default_factory=list)     # one per library, in the order they were opened

    @property
    def vm(self) -> Any:
        return self.vms[0]


@dataclass
class _Pinned:
    """A session kept open across calls (interleaved timing of several models); `ready` holds the
    libraries whose inputs are already on the device."""

    remote: _Remote | None = None
    ready: set[int] = field(default_factory=set)


def resolve_ndk(config: TvmConfig, environ: Mapping[str, str]) -> str | None:
    """The NDK linker to use, checked now: an Android target without one is a registration error."""
    cc = config.ndk_cc or environ.get("TVM_NDK_CC") or None
    if cc is None:
        if config.is_android:
            raise InvalidArgument(
                f"target {config.target} (host {config.host}) is for Android and needs the NDK clang to link: "
                f"set TVM_NDK_CC or the ndk_cc option (--runtime-option ndk_cc=PATH), e.g. "
                f"$ANDROID_NDK_HOME/toolchains/llvm/prebuilt/linux-x86_64/bin/aarch64-linux-android28-clang")
        return None
    found = shutil.which(cc)
    if found is None:
        raise InvalidArgument(f"NDK compiler {cc!r} (ndk_cc option / TVM_NDK_CC) is not an executable file")
    return found


class TvmRunner:
    """Runner protocol over a TVM RPC tracker. Thread-safe: each call takes its own session."""

    def __init__(self, config: TvmConfig, *, on_event: Callable[[TvmEvent], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep, environ: Mapping[str, str] = os.environ):
        import tvm

        self.config = config
        self.ndk_cc = resolve_ndk(config, environ)
        try:
            target = tvm.target.Target(config.target_dict, host=config.host_dict)
        except Exception as exc:  # TVM raises ValueError/TVMError naming the bad field
            raise InvalidArgument(f"TVM target {config.target} / host {config.host} is invalid: "
                                  f"{str(exc).splitlines()[0]}") from exc
        if target.kind.name not in DEVICE_API:
            raise InvalidArgument(f"TVM target kind {target.kind.name!r} has no RPC device; "
                                  f"use one of {', '.join(sorted(DEVICE_API))}")
        self._device_api = DEVICE_API[target.kind.name]
        self._on_event = on_event
        self._sleep = sleep
        self._cache = LibraryCache(config.cache_dir)
        self.tracker = TvmTracker(TrackerAddress(config.tracker_host, config.tracker_port))
        self.health = DeviceHealth(config.cache_dir / HEALTH_FILE,
                                   HealthPolicy(config.unhealthy_after, config.quarantine))
        self._models: dict[tuple[str, int, int], tuple[onnx.ModelProto, str]] = {}
        self._models_lock = threading.Lock()

    def info(self) -> RunnerInfo:
        import tvm

        return RunnerInfo(
            runtime="tvm", version=tvm.__version__, providers=(self.config.target,),
            options=f"target={self.config.target} host={self.config.host} key={self.config.rpc_key} "
                    f"tracker={self.tracker.address} chunk={self.config.chunk}")

    # -- compile -------------------------------------------------------------------------------
    @_hook_errors_as_is
    def compile(self, model: Path, batch: int | None, sample: Feeds) -> CompiledLibrary:
        """The cached library for `batch` rows of each input of `sample` (batch None: `sample` is one
        whole feed, compiled for its exact shapes), compiling it on a miss."""
        proto, sha = self._load(Path(model))
        missing = unsupported_ops(proto)
        if missing:
            raise UnsupportedModel(f"TVM Relax cannot import {Path(model).name}: no converter for "
                                   f"{', '.join(missing)} (TVM agents take QDQ candidates)")
        spec = BuildSpec(target=self.config.target, host=self.config.host,
                         inputs=bind_inputs(input_specs(proto), batch, sample), ndk_cc=self.ndk_cc)
        lib = self._cache.get_or_build(sha, spec, proto, Path(model).name)
        self._emit(TvmEvent("compiled", 0, detail=f"{lib.path.name} cached={lib.from_cache} "
                                                  f"seconds={lib.compile_seconds:.2f}"))
        return lib

    def _load(self, model: Path) -> tuple[onnx.ModelProto, str]:
        """The parsed model and its sha256, reused while the file is unchanged (run + timing)."""
        try:
            stat = model.stat()
        except OSError as exc:
            raise EvaluationError(f"cannot read model {model}: {exc.strerror}") from exc
        key = (str(model), stat.st_mtime_ns, stat.st_size)
        with self._models_lock:
            if key in self._models:
                return self._models[key]
        try:
            proto = onnx.load(str(model))
        except Exception as exc:  # DecodeError / ValueError for files that are not ONNX
            raise EvaluationError(f"cannot load ONNX model {model.name}: {str(exc).splitlines()[0]}") from exc
        entry = (proto, file_sha256(model))
        with self._models_lock:
            self._models = {k: v for k, v in self._models.items() if k[0] != key[0]}
            self._models[key] = entry
            while len(self._models) > 2:            # FP32 and one candidate
                self._models.pop(next(iter(self._models)))
        return entry

    def _batch_for(self, model: Path, wanted: int) -> int:
        """The batch to compile: the model's own when fixed, else `wanted` (chunk, or 1 for timing)."""
        fixed = [int(s.dims[0]) for s in input_specs(self._load(model)[0]) if s.batch_is_fixed]
        return fixed[0] if fixed else wanted

    def _ordered(self, model: Path, feeds: Feeds) -> list[np.ndarray]:
        """The feeds in the order of the compiled function's parameters (the graph's inputs)."""
        return [np.asarray(feeds[s.name]) for s in input_specs(self._load(model)[0])]

    # -- runner protocol -----------------------------------------------------------------------
    @_hook_errors_as_is
    def run(self, model: Path, feeds: Feeds) -> dict[str, np.ndarray]:
        model = Path(model)
        total = num_samples(feeds)
        if total == 0:
            raise DataError("no inputs to run")
        batch = self._batch_for(model, self.config.chunk)
        lib = self.compile(model, batch, feeds)
        arrays = self._ordered(model, feeds)
        names = [o.name for o in self._load(model)[0].graph.output]
        outputs: list[list[np.ndarray]] = []

        def work(remote: _Remote, attempt: int) -> dict[str, np.ndarray]:
            import tvm

            while sum(len(o[0]) for o in outputs) < total:
                start = sum(len(o[0]) for o in outputs)
                count = min(batch, total - start)
                remote.vm.set_input("main", *[tvm.runtime.tensor(_pad(a[start:start + batch], batch), remote.device)
                                              for a in arrays])
                remote.vm.invoke_stateful("main")
                outs = _outputs(remote.vm)
                if len(outs) != len(names):
                    raise EvaluationError(f"{model.name} returned {len(outs)} outputs on the device; "
                                          f"the model has {len(names)}")
                outputs.append([np.asarray(o.numpy())[:count] for o in outs])
                self._emit(TvmEvent("chunk", attempt, done=start + count, total=total))
            return {name: np.concatenate([chunk[i] for chunk in outputs]) for i, name in enumerate(names)}

        return self._with_session([lib], work, f"run {model.name}")

    @_hook_errors_as_is
    def run_feed(self, model: Path, feed: Feeds) -> dict[str, np.ndarray]:
        """One inference on a whole feed (runner protocol 3), compiled for the feed's exact shapes."""
        model = Path(model)
        lib = self.compile(model, None, feed)
        arrays = self._ordered(model, feed)
        names = [o.name for o in self._load(model)[0].graph.output]

        def work(remote: _Remote, attempt: int) -> dict[str, np.ndarray]:
            import tvm

            remote.vm.set_input("main", *[tvm.runtime.tensor(a, remote.device) for a in arrays])
            remote.vm.invoke_stateful("main")
            outs = _outputs(remote.vm)
            if len(outs) != len(names):
                raise EvaluationError(f"{model.name} returned {len(outs)} outputs on the device; "
                                      f"the model has {len(names)}")
            return {name: np.asarray(o.numpy()) for name, o in zip(names, outs)}

        return self._with_session([lib], work, f"run {model.name}")

    @contextlib.contextmanager
    def timers(self, models: Sequence[Path], sample: Feeds) -> Iterator[list[Timer]]:
        """One timer per model, all in one session on one device: each call times `n` batch-1 runs
        with TVM's time_evaluator on the device. Libraries are compiled (or taken from the cache)
        before the first call; a session lost between calls is reopened and the call repeated."""
        models = [Path(m) for m in models]

        def arrays_for(model: Path) -> list[np.ndarray]:
            return [_pad(a[:1], self._batch_for(model, 1)) for a in self._ordered(model, sample)]

        with self._device_timers(models, [self.compile(m, self._batch_for(m, 1), sample) for m in models],
                                 arrays_for) as timers:
            yield timers

    @contextlib.contextmanager
    def feed_timers(self, models: Sequence[Path], feed: Feeds) -> Iterator[list[Timer]]:
        """The same for one whole feed, run exactly as given."""
        models = [Path(m) for m in models]
        with self._device_timers(models, [self.compile(m, None, feed) for m in models],
                                 lambda model: self._ordered(model, feed)) as timers:
            yield timers

    @contextlib.contextmanager
    def _device_timers(self, models: list[Path], built: list[CompiledLibrary],
                       arrays_for: Callable[[Path], list[np.ndarray]]) -> Iterator[list[Timer]]:
        # one module per distinct library: loading the same library twice in one session kills the
        # RPC server (FP32 timed against itself shares one VM)
        libs = list({lib.path: lib for lib in built}.values())
        vm_of = [next(i for i, lib in enumerate(libs) if lib.path == b.path) for b in built]
        pinned = _Pinned()
        what = f"timing {', '.join(m.name for m in models)}"

        def timer_for(index: int) -> Timer:
            arrays = arrays_for(models[index])

            @_hook_errors_as_is
            def timed(n: int) -> list[float]:
                def work(remote: _Remote) -> list[float]:
                    import tvm

                    vm = remote.vms[vm_of[index]]
                    if vm_of[index] not in pinned.ready:
                        vm.set_input("main", *[tvm.runtime.tensor(a, remote.device) for a in arrays])
                        pinned.ready.add(vm_of[index])
                    timer = vm.time_evaluator("invoke_stateful", remote.device, number=1, repeat=n)
                    return [float(t) for t in timer("main").results]

                return self._pinned_call(pinned, libs, work, what)
            return timed

        try:
            yield [timer_for(i) for i in range(len(models))]
        finally:
            pinned.remote = None        # dropping the session frees the device

    def _pinned_call(self, pinned: _Pinned, libs: list[CompiledLibrary], work: Callable[[_Remote], T],
                     what: str) -> T:
        last: Exception | None = None
        for _ in range(self.config.retries + 1):
            if pinned.remote is None:
                pinned.remote = self._with_session(libs, lambda remote, attempt: remote, what)
                pinned.ready.clear()
            try:
                return work(pinned.remote)
            except (_HookFailed, QfarmError):
                raise
            except Exception as exc:  # TVM raises TVMError/RPCError/OSError subclasses from remote calls
                last = self._classify(exc, pinned.remote, what)
                pinned.remote = None
                log.warning("%s on key %r: session lost (%s); reopening", what, self.config.rpc_key, last)
        raise EvaluationError(f"{what}: the {self.config.rpc_key!r} session kept dropping; last error: {last}")

    # -- sessions ------------------------------------------------------------------------------
    def _with_session(self, libs: list[CompiledLibrary], work: Callable[[_Remote, int], T], what: str) -> T:
        """Run `work` on a fresh session; on a lost session retry with backoff on another one. Each
        lost session counts against the device that served it; a completed one clears its record."""
        cfg = self.config
        last: Exception | None = None
        failed_on = ""             # the device of the last lost session
        for attempt in range(1, cfg.retries + 2):
            remote: _Remote | None = None
            where = ""
            try:
                if attempt > 1:
                    self._backoff(attempt, what, last, failed_on)
                session, where = self._request(attempt)
                remote = self._open(session, where, libs, attempt)
                session = None
                result = work(remote, attempt)
            except (_HookFailed, QfarmError):
                raise
            except DeviceUnreachable as exc:
                where, last = exc.address, _SessionLost(str(exc))
            except _SessionLost as exc:
                last = exc
            except Exception as exc:  # TVM raises TVMError/RPCError/OSError subclasses from remote calls
                last = self._classify(exc, remote, what)
            else:
                self.health.succeeded(cfg.rpc_key, where)
                return result
            finally:
                session = remote = None   # dropping the last reference closes the session and frees the device
            if where:
                self.health.failed(cfg.rpc_key, where, str(last))
            failed_on = where
            log.warning("%s on key %r (device %s), attempt %d/%d: %s", what, cfg.rpc_key, where or "-", attempt,
                        cfg.retries + 1, last)
        raise EvaluationError(f"{what}: no working session with a {cfg.rpc_key!r} device in "
                              f"{cfg.retries + 1} attempt(s); last error: {last}")

    def _request(self, attempt: int) -> tuple[Any, str]:
        """A session with a device of the key, passing over unhealthy ones: a session with an
        unhealthy device is held (so the tracker hands out another device) and released after.
        When only unhealthy devices are free, or after MAX_SKIPS, the device at hand is used."""
        cfg = self.config
        held: list[tuple[Any, str]] = []
        try:
            while True:
                timeout = min(cfg.request_timeout, SKIP_REQUEST_TIMEOUT) if held else cfg.request_timeout
                try:
                    session, where = self.tracker.request(cfg.rpc_key, session_timeout=cfg.session_timeout,
                                                          timeout=timeout)
                except TimeoutError as exc:
                    if held:
                        log.warning("no healthy %r device became free: using unhealthy %s", cfg.rpc_key, held[-1][1])
                        return held.pop()
                    raise _SessionLost(str(exc)) from exc
                if not self.health.is_unhealthy(cfg.rpc_key, where):
                    return session, where
                if len(held) >= MAX_SKIPS or self.tracker.device_counts(cfg.rpc_key).free == 0:
                    log.warning("only unhealthy %r devices are free: using %s", cfg.rpc_key, where)
                    return session, where
                self._emit(TvmEvent("skipped", attempt, device=where, detail="unhealthy: repeated session failures"))
                held.append((session, where))
        finally:
            held.clear()   # dropping the sessions gives the skipped devices back to the tracker

    def _open(self, session: Any, where: str, libs: list[CompiledLibrary], attempt: int) -> _Remote:
        from tvm import relax

        remote = _Remote(session, None)
        for lib in libs:
            try:
                session.upload(str(lib.path))
                module = session.load_module(lib.path.name)
                remote.device = remote.device or getattr(session, self._device_api)(0)
                remote.vms.append(relax.VirtualMachine(module, remote.device))
            except Exception as exc:  # a device dying here looks like any other remote failure
                raise self._classify(exc, remote, f"loading {lib.path.name}") from exc
        self._emit(TvmEvent("session", attempt, device=where, detail=f"key={self.config.rpc_key}"))
        return remote

    def _classify(self, exc: Exception, remote: _Remote | None, what: str) -> _SessionLost:
        """A lost session is retried; anything the device itself rejects is the model's failure."""
        import tvm

        text = " | ".join(ln.strip() for ln in str(exc).strip().splitlines()[:3] if ln.strip()) \
            or type(exc).__name__
        if isinstance(exc, tvm.error.RPCSessionTimeoutError) or "RPCSessionTimeoutError" in str(exc):
            raise EvaluationError(f"{what}: the device ended the session after session_timeout="
                                  f"{self.config.session_timeout:g}s; raise the session_timeout option ({text})") from exc
        if remote is not None and not isinstance(exc, OSError) and _alive(remote.session):
            raise EvaluationError(f"{what} failed on the device: {text}") from exc
        return _SessionLost(text)

    def _backoff(self, attempt: int, what: str, last: Exception | None, failed_on: str) -> None:
        delay = self.config.backoff * 2 ** (attempt - 2)
        self._emit(TvmEvent("retry", attempt, device=failed_on, detail=f"{what}: {last}; retrying in {delay:g}s"))
        while delay > 0:
            step = min(delay, KEEPALIVE_SLICE)
            self._sleep(step)
            delay -= step
            self._emit(TvmEvent("waiting", attempt, detail=f"{delay:g}s left"))

    def _emit(self, event: TvmEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception as exc:  # the caller's decision to stop (e.g. lease lost) must not be retried
            raise _HookFailed() from exc


def _outputs(vm: Any) -> list[Any]:
    """The tensors `main` returned after invoke_stateful: one, or each of a tuple (a graph's outputs).
    Asked field by field, as VirtualMachine.get_outputs does, but without its self-referencing
    closure: that cycle keeps the VM, and so the RPC session and its device, alive until Python's
    cycle collector happens to run."""
    arity = vm._get_output_arity("main")  # noqa: SLF001 - the VM's RPC-safe output accessors
    if arity == -1:
        return [vm._get_output("main")]  # noqa: SLF001
    return [vm._get_output("main", i) for i in range(arity)]  # noqa: SLF001


def _pad(chunk: np.ndarray, batch: int) -> np.ndarray:
    """`chunk` grown to the compiled batch by repeating its last row (outputs of pad rows are dropped)."""
    if len(chunk) == batch:
        return np.ascontiguousarray(chunk)
    return np.ascontiguousarray(np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)]))


def _alive(session: Any) -> bool:
    """Whether the RPC session still answers: a 4-byte allocation is a round trip every RPC server
    serves (Device.exist is answered locally); a dead socket raises at once."""
    import tvm

    try:
        tvm.runtime.empty((1,), "float32", session.cpu(0))
        return True
    except Exception:  # any failure to answer means the session is gone  # noqa: BLE001
        return False


# -- the agent's factory (agent.runtimes FACTORIES["tvm"]) -------------------------------------
_FLOAT_OPTIONS = ("session_timeout", "request_timeout", "backoff", "quarantine")
_INT_OPTIONS = ("chunk", "retries", "unhealthy_after")
OPTION_KEYS = ("rpc_key", "target", "host", "tracker", "ndk_cc", "cache_dir") + _FLOAT_OPTIONS + _INT_OPTIONS


def config_from_options(extra: Mapping[str, str]) -> TvmConfig:
    """TvmConfig from `--runtime-option KEY=VALUE` texts: target/host are JSON dicts, tracker is
    HOST:PORT, rpc_key is required (the agent passes its --device by default)."""
    unknown = sorted(set(extra) - set(OPTION_KEYS))
    if unknown:
        raise InvalidArgument(f"unknown TVM runtime option(s) {', '.join(unknown)}; known: {', '.join(OPTION_KEYS)}",
                              step="agent")
    if not extra.get("rpc_key"):
        raise InvalidArgument("TVM runtime needs rpc_key=KEY (the key its devices register under)", step="agent")
    kwargs: dict[str, Any] = {"rpc_key": extra["rpc_key"]}
    for name in ("target", "host", "ndk_cc", "cache_dir"):
        if extra.get(name):
            kwargs[name] = extra[name]
    if extra.get("tracker"):
        address = TrackerAddress.parse(extra["tracker"])
        kwargs["tracker_host"], kwargs["tracker_port"] = address.host, address.port
    for names, kind in ((_FLOAT_OPTIONS, float), (_INT_OPTIONS, int)):
        for name in names:
            if name in extra:
                try:
                    kwargs[name] = kind(extra[name])
                except ValueError as exc:
                    raise InvalidArgument(f"TVM runtime option {name}={extra[name]!r} is not "
                                          f"{'a number' if kind is float else 'an integer'}", step="agent") from exc
    return TvmConfig(**kwargs)


def runner_from_options(options: Any) -> TvmRunner:
    """agent.runtimes' factory: a TvmRunner from RuntimeOptions.extra (threads/optimization are ORT's)."""
    return TvmRunner(config_from_options(options.extra))
