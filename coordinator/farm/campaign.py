"""Campaigns on the coordinator: accept a spec, run the tuner pipeline for each of its models with
a FarmEvaluator, keep a report per campaign, and resume running campaigns after a restart.

Each model's tune works in `data/work/<work key>`, a folder named by everything that decides its
results, so the Tuner's own checkpoint (report.json and its journal) makes an identical
resubmission (or a resumed campaign) skip what is done; campaigns sharing a key run one after the
other. Every campaign's heavy work (preparing, calibrating, ranking, building) runs in the
manager's one build pool: processes with a memory limit and a timeout (`coordinator serve
--build-workers/--build-memory-mb/--build-timeout-s`), so a memory bomb fails its campaign, not
the coordinator. A running tune's report.json is materialised on a throttle, and at once when
GetReport asks for it."""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from pathlib import Path

from coordinator.buildpool import BuildLimits, BuildPool
from coordinator.farm.evaluator import CampaignCancelled, CampaignStopped, FarmContext, FarmEvaluator
from coordinator.farm.spec import CampaignSpec, FileRef, ModelEntry, TensorRefs, spec_from_wire
from coordinator.farm.states import FINISHED, CampaignState
from coordinator.tuner.state import ReportPolicy
from shared.atomic import atomic_output, link_or_copy
from shared.errors import FailedPrecondition, NotFound, QfarmError

log = logging.getLogger(__name__)

SHARED_DIRS = ("prepared", "candidates", "cache")   # the Tuner's build folders under its --out
MESSAGE_EVERY_S = 0.5       # a campaign's "n/m results" line is stored at most this often


class CampaignManager:
    def __init__(self, ctx: FarmContext, data_dir: Path, build: BuildLimits = BuildLimits(),
                 report_policy: ReportPolicy = ReportPolicy()):
        self.ctx = ctx
        self.data_dir = Path(data_dir)
        self.build = build
        self.report_policy = report_policy       # when a running tune's report.json is rewritten whole
        self._pool: BuildPool | None = None
        self._threads: dict[str, threading.Thread] = {}
        self._cancelled: dict[str, threading.Event] = {}
        self._key_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._tuners: dict[Path, object] = {}     # work dir -> its running Tuner (reports on request)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Resume every campaign a previous run left queued or running."""
        with self.ctx.store.transaction() as c:
            unfinished = c.campaigns([CampaignState.QUEUED, CampaignState.RUNNING])
        for row in unfinished:
            log.info("resuming campaign %s (%s)", row.campaign_id, row.name)
            self._launch(row.campaign_id)

    def stop(self, timeout: float = 20.0) -> None:
        """Ask every campaign thread to pause at its next check, and wait for them (bounded); the
        build workers are stopped (a running build is killed: it is rebuilt on resume)."""
        self.ctx.stop.set()
        with self._guard:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        for thread in list(self._threads.values()):
            thread.join(timeout)

    def pool(self) -> BuildPool:
        """The build workers every campaign shares, started with the first campaign."""
        with self._guard:
            if self._pool is None:
                self._pool = BuildPool(self.build, self.data_dir / "tmp" / "build")
            return self._pool

    def submit(self, spec_json: str) -> str:
        spec = spec_from_wire(spec_json)
        missing = self._missing_files(spec)
        if missing:
            names = ", ".join(f"{f.name} ({f.sha256[:12]})" for f in missing[:5])
            raise FailedPrecondition(f"{len(missing)} file(s) of the campaign were not uploaded: {names}"
                                     f"{', ...' if len(missing) > 5 else ''}", step="submit")
        campaign_id = uuid.uuid4().hex[:12]
        with self.ctx.store.transaction() as c:
            c.insert_campaign(campaign_id, spec.name, spec.wire_json(), self.ctx.scheduler.clock())
        log.info("campaign %s (%s) submitted: %d model(s) on %s", campaign_id, spec.name, len(spec.models),
                 ", ".join(spec.devices))
        self._launch(campaign_id)
        return campaign_id

    def cancel(self, campaign_id: str) -> tuple[CampaignState, int]:
        """Stop a queued or running campaign: its runner stops at its next step, its queued jobs are
        cancelled and its leased ones taken back at their agents' next heartbeat (jobs another live
        campaign also wants keep going). Returns the state and how many jobs were cancelled."""
        self._cancel_event(campaign_id).set()        # first: the runner queues nothing new from here on
        with self.ctx.store.transaction() as c:
            row = c.campaign(campaign_id)
            if row.state in FINISHED and row.state != CampaignState.CANCELLED:
                raise FailedPrecondition(f"campaign {campaign_id} is already {row.state.value}: nothing to cancel",
                                         step="cancel")
            c.set_campaign_state(campaign_id, CampaignState.CANCELLED, "cancelled by a client",
                                 self.ctx.scheduler.clock())
        cancelled = self.ctx.scheduler.cancel_unwanted(campaign_id)
        log.info("campaign %s cancelled (%d job(s) cancelled)", campaign_id, cancelled)
        return CampaignState.CANCELLED, cancelled

    def _cancel_event(self, campaign_id: str) -> threading.Event:
        with self._guard:
            return self._cancelled.setdefault(campaign_id, threading.Event())

    def wait(self, campaign_id: str, timeout: float | None = None) -> CampaignState:
        """Block until the campaign's runner thread ends (tests, `coordinator tune --coordinator`)."""
        thread = self._threads.get(campaign_id)
        if thread is not None:
            thread.join(timeout)
        with self.ctx.store.transaction() as c:
            return c.campaign(campaign_id).state

    def model_names(self, campaign_id: str) -> list[str]:
        """The campaign's models, in the order they run (each one's report folder is named so)."""
        with self.ctx.store.transaction() as c:
            row = c.campaign(campaign_id)
        return [m.name for m in spec_from_wire(row.spec_json).models]

    def report_files(self, campaign_id: str, json_only: bool = False) -> tuple[CampaignState, list[tuple[str, bytes]]]:
        """The campaign's report.json and PNGs (`json_only`: report.json alone); while it runs, the
        partial report.json so far. Several models: each one's files under "<model name>/"."""
        with self.ctx.store.transaction() as c:
            row = c.campaign(campaign_id)
        spec = spec_from_wire(row.spec_json)
        files: list[tuple[str, bytes]] = []
        for model in spec.models:
            prefix = "" if len(spec.models) == 1 else f"{model.name}/"
            done = self.report_dir(campaign_id, model)
            if done.is_dir():
                for path in sorted(done.iterdir()):
                    if path.is_file() and (not json_only or path.name == "report.json"):
                        files.append((prefix + path.name, path.read_bytes()))
                continue
            work = self.work_dir(spec, model)
            tuner = self._tuners.get(work)
            if tuner is not None:
                tuner.materialise()             # up to date: results since the last throttled write too
            partial = work / "report.json"
            if partial.is_file():
                files.append((prefix + "report.json", partial.read_bytes()))
        if not files:
            raise NotFound(f"campaign {campaign_id} has no report yet (state {row.state.value}: {row.message})",
                           step="report")
        return row.state, files

    # -- paths --------------------------------------------------------------------------------
    def work_dir(self, spec: CampaignSpec, model: ModelEntry) -> Path:
        return self.data_dir / "work" / spec.work_key(model)

    def report_dir(self, campaign_id: str, model: ModelEntry) -> Path:
        return self.data_dir / "campaigns" / campaign_id / model.name

    # -- running ------------------------------------------------------------------------------
    def _launch(self, campaign_id: str) -> None:
        thread = threading.Thread(target=self._run, args=(campaign_id,), name=f"campaign-{campaign_id}",
                                  daemon=True)
        self._threads[campaign_id] = thread
        thread.start()

    def _key_lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._key_locks.setdefault(key, threading.Lock())

    def _set(self, campaign_id: str, state: CampaignState, message: str) -> bool:
        """Move the campaign, unless it has finished meanwhile (a client cancelled it): then False."""
        with self.ctx.store.transaction() as c:
            if c.campaign(campaign_id).state in FINISHED:
                return False
            c.set_campaign_state(campaign_id, state, message, self.ctx.scheduler.clock())
            return True

    def _message(self, campaign_id: str, message: str) -> None:
        with self.ctx.store.transaction() as c:
            c.set_campaign_message(campaign_id, message, self.ctx.scheduler.clock())

    def _run(self, campaign_id: str) -> None:
        try:
            with self.ctx.store.transaction() as c:
                row = c.campaign(campaign_id)
            spec = spec_from_wire(row.spec_json)
            if not self._set(campaign_id, CampaignState.RUNNING, "starting"):
                return
            for model in spec.models:
                self._run_model(campaign_id, spec, model)
            if self._set(campaign_id, CampaignState.DONE,
                         f"done: {len(spec.models)} model(s) on {', '.join(spec.devices)}"):
                log.info("campaign %s done", campaign_id)
        except CampaignCancelled:
            log.info("campaign %s stopped: cancelled", campaign_id)
            self.ctx.scheduler.cancel_unwanted(campaign_id)    # what it queued while the cancel landed
        except CampaignStopped:
            log.info("campaign %s paused by shutdown; it resumes on the next start", campaign_id)
        except QfarmError as exc:
            if self.ctx.stop.is_set():     # e.g. its build was killed by the shutdown: not the campaign's fault
                log.info("campaign %s interrupted by shutdown (%s); it resumes on the next start", campaign_id, exc)
                return
            self._fail(campaign_id, str(exc))
        except Exception as exc:  # a bug must fail the campaign visibly, never kill the thread silently
            if self.ctx.stop.is_set():
                log.info("campaign %s interrupted by shutdown (%s); it resumes on the next start", campaign_id,
                         type(exc).__name__)
                return
            log.exception("campaign %s crashed", campaign_id)
            self._fail(campaign_id, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._threads.pop(campaign_id, None)     # wait() on a finished campaign reads its state

    def _fail(self, campaign_id: str, reason: str) -> None:
        if self._set(campaign_id, CampaignState.FAILED, reason):
            log.warning("campaign %s failed: %s", campaign_id, reason)
        self.ctx.scheduler.cancel_unwanted(campaign_id)

    def _run_model(self, campaign_id: str, spec: CampaignSpec, model: ModelEntry) -> None:
        from coordinator.report import write_report
        from coordinator.tune import Tuner, TuneEvents

        work = self.work_dir(spec, model)
        label = f"{model.name}:"
        cancelled = self._cancel_event(campaign_id)
        with self._key_lock(spec.work_key(model)):
            if cancelled.is_set():
                raise CampaignCancelled()
            self._share_builds(work)
            config = self._tune_config(spec, model, work)
            done = [0]
            planned = [0]
            shown = [0.0]

            def on_plan(total: int) -> None:
                planned[0] += total * len(spec.devices)

            def on_result(cid: str, device: str, result: dict) -> None:
                done[0] += 1
                now = time.monotonic()
                if now - shown[0] >= MESSAGE_EVERY_S or done[0] >= planned[0]:   # a line per result costs a write
                    shown[0] = now
                    self._message(campaign_id, f"{label} {done[0]}/{planned[0]} results")

            evaluator = FarmEvaluator(self.ctx, campaign_id, spec.devices, spec.device_timeout_s,
                                      on_status=lambda m: self._message(campaign_id, f"{label} {m}"),
                                      cancelled=cancelled)
            events = TuneEvents(on_stage=lambda stage: self._message(campaign_id, f"{label} {stage}"),
                                on_plan=on_plan, on_result=on_result)
            tuner = Tuner(config, evaluator, events, pool=self.pool(), report_policy=self.report_policy)
            self._tuners[work] = tuner
            try:
                report = tuner.run()
            finally:
                self._tuners.pop(work, None)
        with atomic_output(self.report_dir(campaign_id, model)) as staging:
            staging.mkdir()
            write_report(staging / "report.json", report)
            self.pool().call("coordinator.plots:plots_task", str(staging / "report.json"), str(staging),
                             what=f"the plots of {model.name}")

    def _share_builds(self, work: Path) -> None:
        """Prepared models, candidate files and calibration ranges are named by content, so every
        tune shares them: a candidate is built once per coordinator, whichever campaign needs it."""
        work.mkdir(parents=True, exist_ok=True)
        for name in SHARED_DIRS:
            shared = self.data_dir / "shared" / name
            shared.mkdir(parents=True, exist_ok=True)
            link = work / name
            if not link.is_symlink() and not link.exists():   # relative: the data dir may move
                link.symlink_to(os.path.relpath(shared, work), target_is_directory=True)

    def _tune_config(self, spec: CampaignSpec, model: ModelEntry, work: Path):
        from coordinator.preprocess import Preprocess
        from coordinator.tune import TuneConfig

        model_dir = self.data_dir / "inputs" / "models" / model.file.sha256
        pre = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.preprocess.items()}
        if spec.tensors is not None:
            samples = {"data": self._tensor_source(spec.tensors),
                       "calibration_data": self._tensor_source(spec.calibration_tensors)}
        else:
            samples = {"images": self._materialize(spec.images, "images"),
                       "calibration_images": self._materialize(spec.calibration_images, "images")
                       if spec.calibration_images else None}
        return TuneConfig(model=self._link(model.file, model_dir), out=work, **{"images": None, **samples},
                          preprocess=Preprocess(**pre), settings=spec.settings(), excludes=model.excludes,
                          **spec.tune_options())

    def _tensor_source(self, refs: TensorRefs | None) -> Path | None:
        """A tensor dataset rebuilt from artifacts: its folder, or the one file in a folder of its own."""
        if refs is None:
            return None
        folder = self._materialize(refs.files, "tensors")
        return folder if refs.folder else folder / refs.files[0].name

    def _materialize(self, files: tuple[FileRef, ...], kind: str) -> Path:
        """A folder rebuilt from artifacts under the original file names (image labels come from them)."""
        key = hashlib.sha256("|".join(f"{f.name}:{f.sha256}" for f in files).encode()).hexdigest()[:20]
        folder = self.data_dir / "inputs" / kind / key
        for ref in files:
            self._link(ref, folder)
        return folder

    def _link(self, ref: FileRef, folder: Path) -> Path:
        target = folder / ref.name
        if target.is_file() and target.stat().st_size == ref.size_bytes:
            return target
        stored = self.ctx.artifacts.get(ref.sha256)  # verified
        with atomic_output(target, fsync=False) as tmp:
            link_or_copy(stored.path, tmp)
        return target

    def _missing_files(self, spec: CampaignSpec) -> list[FileRef]:
        with self.ctx.store.transaction() as c:
            have = c.has_artifacts([f.sha256 for f in spec.files()])
        return [f for f in spec.files() if f.sha256 not in have or not self.ctx.artifacts.has(f.sha256)]
