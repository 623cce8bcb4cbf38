"""The tuning pipeline: prepare -> data -> reference -> rank -> strategy batches -> build ->
evaluate -> Pareto -> report. One code path for local and farm runs: only the Evaluator differs."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from coordinator import data as data_mod
from coordinator.evaluators import EvalInputs, Evaluator
from coordinator.pareto import pareto
from coordinator.prepare import PreparedModel, prepare_model
from coordinator.quantize import BuiltCandidate, CandidateSpec, build_candidate, quantizable_nodes, spec_for
from coordinator.report import SCHEMA_VERSION, identity_mismatch, read_report, write_report
from coordinator.strategies import StrategyContext, make_strategy
from coordinator.tuner.config import TuneConfig
from coordinator.tuner.probe import RECIPE_PROBES
from coordinator.tuner.rank import RANKING_CACHE_VERSION, RANKING_METHODS
from coordinator.tuner.search import TARGET_DRIVEN
from shared.errors import InvalidArgument, ModelError, QfarmError
from shared.results import CrashCause, CrashKind, DeviceResult
from shared.settings import QuantSettings

log = logging.getLogger(__name__)

@dataclass
class TuneEvents:
    """Callbacks for progress display; all optional."""

    on_stage: Callable[[str], None] = lambda stage: None
    on_plan: Callable[[int], None] = lambda total: None
    on_result: Callable[[str, str, DeviceResult], None] = lambda cid, device, result: None


@dataclass(frozen=True)
class Workspace:
    """Everything derived from the config before any candidate is built."""

    prepared: PreparedModel
    calibration: np.ndarray | None
    eval_inputs: EvalInputs
    calibration_digest: str
    identity: dict


def apply_model_recipes(prepared: PreparedModel, settings: QuantSettings, work_dir: Path) -> PreparedModel:
    """FP32-equivalent rewrites chosen in the recipe (CLE), as a new prepared model."""
    mode = settings.recipe.get("cle")
    if not mode:
        return prepared
    import onnx

    from coordinator.prepare import PREPARE_VERSION, sha256_file
    from coordinator.recipes import equalize

    target = work_dir / f"cle-{mode}-{prepared.sha256[:16]}-v{PREPARE_VERSION}.onnx"
    if not target.exists():
        model, pairs = equalize(onnx.load(str(prepared.path)), through_relu6=(mode == "relu6"))
        log.info("CLE equalised %d conv pairs", len(pairs))
        tmp = target.with_suffix(".onnx.tmp")
        onnx.save(model, str(tmp))
        tmp.replace(target)
    return dataclass_replace(prepared, path=target, sha256=sha256_file(target), size_bytes=target.stat().st_size)


def preset_excludes(prepared: PreparedModel, settings: QuantSettings) -> tuple[str, ...]:
    presets = settings.recipe.get("keep_float")
    if not presets:
        return ()
    import onnx

    from coordinator.recipes import preset_nodes

    return tuple(preset_nodes(onnx.load(str(prepared.path)), presets.split(",")))


def load_workspace(config: TuneConfig) -> Workspace:
    prepared = apply_model_recipes(prepare_model(config.model, config.out / "prepared"), config.settings,
                                   config.out / "prepared")
    data_mod.check_fits_model(config.preprocess, prepared.input_shape, prepared.input_name)
    images = data_mod.list_images(config.images, config.labels)
    cal_set = None if config.calibration_images is None else data_mod.list_images(config.calibration_images, "none")
    n_cal = config.settings.calibration_images if config.settings.is_static else config.n_calibration
    calib, evals = data_mod.split(images, n_cal, config.n_eval, config.seed, cal_set)
    calibration = data_mod.load_batch(calib, config.preprocess) if config.settings.is_static else None
    eval_inputs = EvalInputs(data_mod.load_batch(evals, config.preprocess), data_mod.labels_array(evals),
                             prepared.input_name, config.latency_runs)
    identity = {
        "model_sha256": prepared.sha256,
        "settings": config.settings.canonical(),
        "preprocess": config.preprocess.to_dict(),
        "eval_digest": eval_inputs.digest(),
        "calibration_digest": calib.digest(),
    }
    return Workspace(prepared, calibration, eval_inputs, calib.digest(), identity)


class Tuner:
    """Runs one tune; `report` (a dict) is the state and is written after every result."""

    def __init__(self, config: TuneConfig, evaluator: Evaluator, events: TuneEvents | None = None):
        self.config = config
        self.evaluator = evaluator
        self.events = events or TuneEvents()
        self.report_path = config.out / "report.json"
        self.evaluations = 0
        self.resumed = 0
        self.stop_reason: str | None = None
        self._deadline: float | None = None
        self.settings = config.settings       # the probe stage may switch to a better recipe

    # -- public -------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.config
        start = time.monotonic()
        self.events.on_stage("preparing model and data")
        ws = load_workspace(cfg)
        self.ws = ws
        excludes = self._validated_excludes(ws.prepared)
        self.report = self._load_or_new_report(ws)
        self.events.on_stage("measuring the FP32 reference")
        fp32 = self.evaluator.reference(ws.prepared.path, ws.prepared.sha256, ws.eval_inputs)
        self.report["fp32"] = {device: result.to_fp32_report() for device, result in fp32.items()}
        self._save()
        self._deadline = None if cfg.budget_seconds is None else start + cfg.budget_seconds
        if cfg.probe_recipes:
            self.events.on_stage("probing recipes")
            self.settings = self._probe_recipes(ws, excludes)
        if cfg.has_target and cfg.strategy in TARGET_DRIVEN and self._full_int8_meets_target(ws, excludes):
            # excluding more nodes never makes a model smaller: the search (and its ranking) is moot
            self.report["search"] = {"skipped": "full INT8 with the fixed excludes already meets the target"}
            self._blame(ws, [])
            self._finish(time.monotonic() - start)
            return self.report
        self.events.on_stage("ranking layer sensitivity")
        ranking = self._ranking(ws, excludes)
        context = StrategyContext(ranking=tuple(r for r in ranking if r not in excludes),
                                  fixed_excludes=excludes, max_candidates=cfg.max_candidates, seed=cfg.seed,
                                  meets_target=self._meets_target if cfg.has_target else None,
                                  parallelism=self.evaluator.parallelism)
        strategy = make_strategy(cfg.strategy, context)
        self.events.on_stage("evaluating candidates")
        idle_rounds = 0
        while not self._budget_spent():
            batch = strategy.next_batch(self._history())
            if not batch:
                break
            todo = list(dict.fromkeys(ex for ex in batch if not self._complete(self._spec(ws, ex).id)))
            self.resumed += len(set(batch)) - len(todo)
            if cfg.budget_evals is not None:
                todo = todo[: max(0, cfg.budget_evals - self.evaluations)]
            idle_rounds = idle_rounds + 1 if not todo else 0
            if idle_rounds > 1000:  # a strategy that only re-proposes measured sets is finished
                break
            self.events.on_plan(len(todo))
            self._evaluate_batch(ws, [self._spec(ws, ex) for ex in todo])
        self._blame(ws, ranking)
        self._finish(time.monotonic() - start)
        return self.report

    # -- steps --------------------------------------------------------------------------------
    def _validated_excludes(self, prepared: PreparedModel) -> tuple[str, ...]:
        from coordinator.quantize import validate_node_names

        return tuple(sorted(set(validate_node_names(prepared, self.config.excludes))
                            | set(preset_excludes(prepared, self.config.settings))))

    def _spec(self, ws: Workspace, excluded, settings: QuantSettings | None = None) -> CandidateSpec:
        return spec_for(ws.prepared, settings or self.settings, excluded, calibration_digest=ws.calibration_digest)

    def _full_int8_meets_target(self, ws: Workspace, excludes: tuple[str, ...]) -> bool:
        """Measure (or look up) the candidate every target-driven strategy starts from."""
        spec = self._spec(ws, excludes)
        if not self._complete(spec.id) and not self._budget_spent():
            self.events.on_plan(1)
            self._evaluate_batch(ws, [spec])
        entry = self._candidate_entry(spec.id)
        result = (entry or {}).get("results", {}).get(self.evaluator.devices[0])
        return bool(result) and self._meets_target(result)

    def _probe_recipes(self, ws: Workspace, excludes: tuple[str, ...]) -> QuantSettings:
        """Measure the base settings and each probe as full INT8 (plus fixed excludes), then search
        exclusions with the recipe that meets the target with the smallest model, or else the one
        with the best agreement on the primary device."""
        base = self.config.settings
        options = {"base": base}
        for name in self.config.probe_recipes:
            changes = dict(RECIPE_PROBES[name])
            if "recipe" in changes:
                changes["recipe"] = {**dict(base.recipe), **changes["recipe"]}
            options[name] = base.replace(**changes)
        specs = {name: self._spec(ws, excludes, settings) for name, settings in options.items()}
        todo = [spec for spec in dict.fromkeys(specs.values()) if not self._complete(spec.id)]
        if self.config.budget_evals is not None:
            todo = todo[: max(0, self.config.budget_evals - self.evaluations)]
        self.events.on_plan(len(todo))
        self._evaluate_batch(ws, todo)
        device = self.evaluator.devices[0]
        measured = {}
        for name, spec in specs.items():
            entry = self._candidate_entry(spec.id)
            result = (entry or {}).get("results", {}).get(device)
            if result and result.get("status") == "ok":
                measured[name] = {**result, "size_bytes": entry["size_bytes"]}
        if not measured:
            return base
        meeting = [n for n, r in measured.items() if self.config.has_target and self._meets_target(r, device)]
        if meeting:
            chosen = min(meeting, key=lambda n: (measured[n]["size_bytes"], measured[n].get("latency_ms_p50", 0)))
        else:
            chosen = max(measured, key=lambda n: (measured[n]["top1_agreement"], -measured[n]["size_bytes"]))
        self.report["recipe_probe"] = {
            "chosen": chosen, "settings": options[chosen].to_dict(),
            "measured": {n: {"candidate": specs[n].id, "top1_agreement": r["top1_agreement"],
                             "top1_accuracy": r.get("top1_accuracy"), "size_bytes": r["size_bytes"],
                             "latency_ms_p50": r.get("latency_ms_p50")} for n, r in measured.items()}}
        self._save()
        return options[chosen]

    def _blame(self, ws: Workspace, ranking: list[str]) -> None:
        """For each device class with crashing candidates, bisect (most sensitive nodes first) to
        the nodes whose quantization makes it crash, and measure the candidate without them: the
        retried candidate joins the report like any other, so the front has a working model."""
        from coordinator.tuner.blame import CandidateResults, blame_crashes

        if not self.config.blame_crashes:
            return
        current = self.settings.to_dict()
        # QOperator and dynamic models are refused whole by QDQ-only runtimes (TVM): not a node's fault
        node_level = self.settings.is_static and self.settings.format == "qdq"
        candidates = [CandidateResults(c["id"], tuple(c["excluded_nodes"]),
                                       {d: r for d, r in map(lambda i: (i[0], DeviceResult.from_dict(i[1])),
                                                             c["results"].items())
                                        if node_level or r.status.value != "unsupported"})
                      for c in self.report["candidates"]
                      if c.get("settings", current) == current and not c.get("int16_nodes")]
        if not any(r.blameable for c in candidates for r in c.results.values()):
            return
        if self._budget_spent():
            self.report["blame"] = {"skipped": f"crashes not blamed: {self.stop_reason}"}
            self._save()
            return
        self.events.on_stage("blaming crashes")
        quantizable = quantizable_nodes(ws.prepared, self.settings)

        def probe(device: str, excluded: tuple[str, ...]) -> DeviceResult:
            spec = self._spec(ws, excluded)
            if not self._complete(spec.id):
                if self._budget_spent():
                    return DeviceResult.failure(CrashCause(CrashKind.NOT_MEASURED, self.stop_reason or ""))
                fresh = self._candidate_entry(spec.id) is None
                self.events.on_plan(1)
                self._evaluate_batch(ws, [spec])
                if fresh and self._candidate_entry(spec.id) is not None:
                    self._candidate_entry(spec.id)["origin"] = "blame"   # a probe, not a search step
            result = (self._candidate_entry(spec.id) or {}).get("results", {}).get(device)
            return DeviceResult.from_dict(result) if result else DeviceResult.failure(CrashCause(CrashKind.NOT_MEASURED))

        self.report["blame"] = blame_crashes(candidates, self.evaluator.devices, quantizable,
                                             ranking or quantizable, probe)
        self._save()

    def _build(self, ws: Workspace, spec: CandidateSpec) -> BuiltCandidate:
        return build_candidate(ws.prepared, spec, self.config.out / "candidates", ws.calibration,
                               self.config.out / "cache")

    def _ranking(self, ws: Workspace, excludes: tuple[str, ...]) -> list[str]:
        """Both sensitivity methods, reported per node; the chosen one orders the search."""
        cfg = self.config
        existing = self.report.get("ranking")
        if existing and self.report.get("ranking_method") == cfg.ranking_method:
            return [r["node"] for r in existing]
        chosen = self.settings
        qdq_settings = chosen if (chosen.is_static and chosen.format == "qdq") else \
            QuantSettings(per_channel=chosen.per_channel, reduce_range=chosen.reduce_range,
                          calibration_images=chosen.calibration_images, recipe=chosen.recipe)
        calibration = ws.calibration if ws.calibration is not None else \
            ws.eval_inputs.inputs[: cfg.n_calibration]
        # the ranking depends on the model, settings and data, never on the device: another device
        # class (or another campaign) tuning the same model reuses it from the shared cache
        key = hashlib.sha256("|".join([ws.prepared.sha256, chosen.canonical(), qdq_settings.canonical(),
                                       hashlib.sha256(np.ascontiguousarray(calibration).tobytes()).hexdigest(),
                                       str(cfg.ranking_images), cfg.ranking_method, RANKING_CACHE_VERSION])
                             .encode()).hexdigest()[:20]
        cached = cfg.out / "cache" / f"ranking-{key}.json"
        rows = None
        if cached.is_file():
            try:
                rows = json.loads(cached.read_text())
            except ValueError as exc:   # a torn or edited cache file is measured again, not trusted
                log.warning("ignoring unreadable ranking cache %s: %s", cached, exc)
        if rows is None:
            rows = self._measure_ranking(ws, chosen, qdq_settings, calibration)
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(rows))
            tmp.replace(cached)
        self.report["ranking"] = rows
        self.report["ranking_method"] = cfg.ranking_method
        self._save()
        return [r["node"] for r in rows]

    def _measure_ranking(self, ws: Workspace, chosen: QuantSettings, qdq_settings: QuantSettings,
                         calibration: np.ndarray) -> list[dict]:
        from coordinator.sensitivity import score_all

        cfg = self.config
        spec = spec_for(ws.prepared, qdq_settings, (), calibration_digest=ws.calibration_digest)
        full_qdq = build_candidate(ws.prepared, spec, cfg.out / "candidates", calibration, cfg.out / "cache")
        feeds = [{ws.prepared.input_name: calibration[i:i + 1]} for i in range(min(cfg.ranking_images,
                                                                                  len(calibration)))]
        by_method = score_all(ws.prepared.path, full_qdq.path, feeds)  # one measurement pass, both methods
        allowed = set(quantizable_nodes(ws.prepared, chosen))
        primary = [s for s in by_method[cfg.ranking_method] if s.node in allowed]
        others = {m: {s.node: s for s in ranked} for m, ranked in by_method.items()}
        rows = []
        for position, s in enumerate(primary):
            row: dict[str, Any] = {"node": s.node, "op_type": s.op_type, "score": s.score, "rank": position + 1,
                                   "tensor": s.tensor}
            for method in RANKING_METHODS:
                hit = others[method].get(s.node)
                row[method] = None if hit is None else {"score": hit.score, **dict(hit.details)}
            rows.append(row)
        return rows

    def _evaluate_batch(self, ws: Workspace, batch: list[CandidateSpec]) -> None:
        def built() -> Iterator[BuiltCandidate]:
            for spec in batch:
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    return
                try:
                    cand = self._build(ws, spec)
                except ModelError as exc:
                    self._record_build_failure(spec, exc)
                    continue
                self._upsert_candidate(cand)
                self._save()
                yield cand

        for cid, device, result in self.evaluator.evaluate(built(), ws.eval_inputs):
            self._record(cid, device, result)

    # -- report state -------------------------------------------------------------------------
    def _load_or_new_report(self, ws: Workspace) -> dict:
        cfg = self.config
        if self.report_path.exists():
            report = read_report(self.report_path)
            diff = identity_mismatch(report, ws.identity)
            if diff:
                raise InvalidArgument(
                    f"{self.report_path} belongs to another tune (different {', '.join(diff)}); "
                    "use a new --out directory to start a new one", step="resume")
            log.info("resuming %s", self.report_path)
            report["status"] = {**report.get("status", {}), "state": "running"}
            return report
        return {
            "schema_version": SCHEMA_VERSION,
            "identity": ws.identity,
            "model": {"path": str(cfg.model), "sha256": ws.prepared.sha256, "size_bytes": ws.prepared.size_bytes,
                      "nodes": ws.prepared.num_nodes, "input_name": ws.prepared.input_name,
                      "input_shape": list(ws.prepared.input_shape), "prepared_path": str(ws.prepared.path)},
            "settings": {**cfg.settings.to_dict(), "strategy": cfg.strategy, "seed": cfg.seed,
                         "max_candidates": cfg.max_candidates, "ranking_method": cfg.ranking_method,
                         "objectives": list(cfg.objectives), "excludes": list(cfg.excludes)},
            "data": {"images": str(cfg.images), "calibration_images": None if cfg.calibration_images is None
                     else str(cfg.calibration_images), "labels": cfg.labels, "calibration": len(ws.calibration)
                     if ws.calibration is not None else 0, "eval": len(ws.eval_inputs.inputs),
                     "preprocess": cfg.preprocess.to_dict()},
            "devices": list(self.evaluator.devices),
            "ranking": [],
            "candidates": [],
            "fp32": {},
            "pareto": {},
            "status": {"state": "running"},
        }

    def _candidate_entry(self, cid: str) -> dict | None:
        return next((c for c in self.report["candidates"] if c["id"] == cid), None)

    def _upsert_candidate(self, cand: BuiltCandidate) -> None:
        entry = self._candidate_entry(cand.id)
        if entry is None:
            entry = {"id": cand.id, "results": {}}
            self.report["candidates"].append(entry)
        entry.update({"settings": cand.spec.settings.to_dict(), "excluded_nodes": list(cand.spec.excluded_nodes),
                      "num_excluded": len(cand.spec.excluded_nodes), "int16_nodes": list(cand.spec.int16_nodes),
                      "size_bytes": cand.size_bytes, "sha256": cand.sha256,
                      "path": str(cand.path.relative_to(self.config.out))})

    def _record_build_failure(self, spec: CandidateSpec, exc: QfarmError) -> None:
        entry = self._candidate_entry(spec.id)
        if entry is None:
            entry = {"id": spec.id, "settings": spec.settings.to_dict(), "excluded_nodes": list(spec.excluded_nodes),
                     "num_excluded": len(spec.excluded_nodes), "int16_nodes": list(spec.int16_nodes),
                     "size_bytes": 0, "results": {}}
            self.report["candidates"].append(entry)
        result = DeviceResult.failure(CrashCause(CrashKind.BUILD, str(exc)))
        for device in self.evaluator.devices:
            entry["results"][device] = result.to_report()
            self.events.on_result(spec.id, device, result)
        self._save()

    def _record(self, cid: str, device: str, result: DeviceResult) -> None:
        entry = self._candidate_entry(cid)
        if entry is None:
            raise QfarmError(f"result for unknown candidate {cid}", step="tune")
        if device not in entry["results"]:
            self.evaluations += 1
        entry["results"][device] = result.to_report()
        self._update_pareto()
        self._save()
        self.events.on_result(cid, device, result)

    def _complete(self, cid: str) -> bool:
        entry = self._candidate_entry(cid)
        return entry is not None and all(d in entry["results"] for d in self.evaluator.devices)

    def _history(self) -> dict:
        """Primary-device results by exclusion set, as strategies see them."""
        device = self.evaluator.devices[0]
        current = self.settings.to_dict()
        return {tuple(c["excluded_nodes"]): {**c["results"][device], "size_bytes": c["size_bytes"]}
                for c in self.report["candidates"]
                if device in c["results"] and not c.get("int16_nodes") and c.get("settings", current) == current}

    def _budget_spent(self) -> bool:
        cfg = self.config
        if cfg.budget_evals is not None and self.evaluations >= cfg.budget_evals:
            self.stop_reason = f"budget of {cfg.budget_evals} evaluations spent"
            return True
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self.stop_reason = f"budget of {cfg.budget_seconds:g} s spent"
            return True
        return False

    def _meets_target(self, result: dict, device: str | None = None) -> bool:
        cfg = self.config
        if result.get("status") != "ok":
            return False
        if cfg.max_agreement_drop is not None and 1.0 - result["top1_agreement"] > cfg.max_agreement_drop + 1e-12:
            return False
        if cfg.max_top1_drop is not None:
            fp32 = self.report["fp32"].get(device or self.evaluator.devices[0], {}).get("top1_accuracy")
            if fp32 is None or result.get("top1_accuracy") is None:
                return False
            if fp32 - result["top1_accuracy"] > cfg.max_top1_drop + 1e-12:
                return False
        return True

    def _target_summary(self, device: str, results: dict) -> dict | None:
        cfg = self.config
        if not cfg.has_target:
            return None
        meeting = [cid for cid, r in results.items() if self._meets_target(r, device)]
        target = {"max_agreement_drop": cfg.max_agreement_drop, "max_top1_drop": cfg.max_top1_drop}
        if meeting:
            best = min(meeting, key=lambda cid: (results[cid]["size_bytes"], -results[cid]["top1_agreement"], cid))
            return {**target, "met": True, "candidate": best,
                    "line": f"target met on {device} by {best} "
                            f"(agreement {results[best]['top1_agreement'] * 100:.1f}%)"}
        ok = {cid: r for cid, r in results.items() if r.get("status") == "ok"}
        best_agree = max((r["top1_agreement"] for r in ok.values()), default=None)
        shown = "none measured" if best_agree is None else f"best agreement {best_agree * 100:.1f}%"
        return {**target, "met": False, "candidate": None,
                "line": f"target not met on {device}: {shown}; the best-so-far front is kept"}

    def _update_pareto(self) -> None:
        per_device = {}
        for device in self.evaluator.devices:
            results = {c["id"]: {**c["results"][device], "size_bytes": c["size_bytes"]}
                       for c in self.report["candidates"] if device in c["results"]}
            res = pareto(results, self.config.objectives)
            target = self._target_summary(device, results)
            recommended = target["candidate"] if target and target["met"] else res.recommended
            per_device[device] = {"fronts": res.fronts, "recommended": recommended, "best": res.best,
                                  "target": target}
        primary = per_device[self.evaluator.devices[0]]
        self.report["pareto"] = {"objectives": list(self.config.objectives), **primary, "per_device": per_device}

    def _finish(self, elapsed: float) -> None:
        self._update_pareto()
        self.report["status"] = {"state": "done", "evaluations": self.evaluations, "resumed": self.resumed,
                                 "elapsed_seconds": round(elapsed, 2), "stopped_by": self.stop_reason}
        self._save()

    def _save(self) -> None:
        write_report(self.report_path, self.report)
