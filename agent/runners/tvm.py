"""TVM runner: compile a candidate with Relax for the device class's target, then run it on a device
that registered with the agent's RPC tracker (a phone's TVM RPC app, or `tvm.exec.rpc_server`).

Phones drop off Wi-Fi: a lost session is retried on a fresh tracker request (possibly another device
under the same key), resuming at the chunk that failed, with exponential backoff. A device whose
sessions keep failing is marked unhealthy (agent.runners.tvm_health) and skipped while another
device of the key is free. `on_event` is called after each chunk and during backoff waits so the
caller can keep its job lease alive."""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import numpy as np
import onnx

from agent.runners.tvm_compile import (BuildSpec, CompiledLibrary, LibraryCache, file_sha256, input_spec,
                                       unsupported_ops)
from agent.runners.tvm_health import HEALTH_FILE, DeviceHealth, HealthPolicy
from shared.runners.base import RunnerInfo, UnsupportedModel
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
    """Progress of one infer/latency call, for lease keep-alive and logs."""

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
    vm: Any


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
    def compile(self, model: Path, input_name: str, batch: int, sample_shape: tuple[int, ...],
                dtype: str | None = None) -> CompiledLibrary:
        """The cached library for `batch` rows of `sample_shape`, compiling it on a miss."""
        proto, sha = self._load(Path(model))
        missing = unsupported_ops(proto)
        if missing:
            raise UnsupportedModel(f"TVM Relax cannot import {Path(model).name}: no converter for "
                                   f"{', '.join(missing)} (TVM agents take QDQ candidates)")
        spec_in = input_spec(proto, input_name)
        if dtype is not None and dtype != spec_in.dtype:
            raise DataError(f"input {input_name!r} of {Path(model).name} is {spec_in.dtype}; the data is {dtype}")
        spec = BuildSpec(target=self.config.target, host=self.config.host, input_name=input_name,
                         shape=spec_in.bind(batch, tuple(sample_shape)), dtype=spec_in.dtype, ndk_cc=self.ndk_cc)
        lib = self._cache.get_or_build(sha, spec, proto, Path(model).name)
        self._emit(TvmEvent("compiled", 0, detail=f"{lib.path.name} cached={lib.from_cache} "
                                                  f"seconds={lib.compile_seconds:.2f}"))
        return lib

    def _load(self, model: Path) -> tuple[onnx.ModelProto, str]:
        """The parsed model and its sha256, reused while the file is unchanged (infer + latency)."""
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
            self._models = {key: entry}
        return entry

    def _batch_for(self, model: Path, input_name: str, wanted: int) -> int:
        """The batch to compile: the model's own when fixed, else `wanted` (chunk, or 1 for latency)."""
        spec = input_spec(self._load(model)[0], input_name)
        return int(spec.dims[0]) if spec.batch_is_fixed else wanted

    # -- runner protocol -----------------------------------------------------------------------
    @_hook_errors_as_is
    def infer(self, model: Path, inputs: np.ndarray, input_name: str) -> np.ndarray:
        model = Path(model)
        inputs = np.asarray(inputs)
        if len(inputs) == 0:
            raise DataError("no inputs to run")
        batch = self._batch_for(model, input_name, self.config.chunk)
        lib = self.compile(model, input_name, batch, inputs.shape[1:], inputs.dtype.name)
        outputs: list[np.ndarray] = []
        total = len(inputs)

        def work(remote: _Remote, attempt: int) -> np.ndarray:
            import tvm

            while sum(len(o) for o in outputs) < total:
                start = sum(len(o) for o in outputs)
                chunk = inputs[start:start + batch]
                feed = _pad(chunk, batch)
                out = remote.vm["main"](tvm.runtime.tensor(feed, remote.device))
                first = out if isinstance(out, tvm.runtime.Tensor) else out[0]
                outputs.append(np.asarray(first.numpy()).reshape(batch, -1)[:len(chunk)])
                self._emit(TvmEvent("chunk", attempt, done=start + len(chunk), total=total))
            return np.concatenate(outputs)

        return self._with_session(lib, work, f"infer {model.name}")

    @_hook_errors_as_is
    def latency_seconds(self, model: Path, sample: np.ndarray, input_name: str, runs: int) -> list[float]:
        """Per-inference seconds of `runs` batch-1 runs timed on the device by TVM's time_evaluator
        (one warm-up run first). A model with a fixed batch > 1 is timed at that batch."""
        model = Path(model)
        sample = np.asarray(sample)[:1]
        if runs < 1:
            raise InvalidArgument(f"latency runs {runs} must be >= 1")
        batch = self._batch_for(model, input_name, 1)
        lib = self.compile(model, input_name, batch, sample.shape[1:], sample.dtype.name)

        def work(remote: _Remote, attempt: int) -> list[float]:
            import tvm

            remote.vm.set_input("main", tvm.runtime.tensor(_pad(sample, batch), remote.device))
            timer = remote.vm.time_evaluator("invoke_stateful", remote.device, number=1, repeat=runs)
            return [float(t) for t in timer("main").results]

        return self._with_session(lib, work, f"latency {model.name}")

    # -- sessions ------------------------------------------------------------------------------
    def _with_session(self, lib: CompiledLibrary, work: Callable[[_Remote, int], T], what: str) -> T:
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
                remote = self._open(session, where, lib, attempt)
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

    def _open(self, session: Any, where: str, lib: CompiledLibrary, attempt: int) -> _Remote:
        from tvm import relax

        try:
            session.upload(str(lib.path))
            module = session.load_module(lib.path.name)
            device = getattr(session, self._device_api)(0)
            vm = relax.VirtualMachine(module, device)
        except Exception as exc:  # a device dying here looks like any other remote failure
            raise self._classify(exc, _Remote(session, None, None), f"loading {lib.path.name}") from exc
        self._emit(TvmEvent("session", attempt, device=where, detail=f"key={self.config.rpc_key}"))
        return _Remote(session, device, vm)

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
