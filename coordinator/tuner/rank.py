"""Phase: rank the quantizable nodes by quantization sensitivity. Both methods come from one
measurement pass and are reported per node; the chosen one orders the search. The ranking
depends on the model, settings and data, never on the device, so it is cached by content: another
device class (or campaign) tuning the same model reuses it."""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from coordinator.quantize import build_candidate, quantizable_nodes, spec_for
from coordinator.tuner.catalog import RANKING_METHODS
from coordinator.tuner.run import TuneRun
from shared.atomic import atomic_write_text
from shared.feeds import Feeds, num_samples, take
from shared.feeds import digest as feeds_digest
from shared.settings import QuantSettings

log = logging.getLogger(__name__)

RANKING_CACHE_VERSION = "1"   # bump when the ranking's measurement changes


def rank(run: TuneRun, record: bool = True) -> list[str]:
    """Quantizable nodes under the current recipe (run.settings), most damaged first. `record`: it
    is the report's `ranking` (the primary device's), resumed when present; another device class's
    recipe only reads the content-keyed cache."""
    cfg, ws, report = run.config, run.ws, run.state.report
    chosen = run.settings
    if record and report.get("ranking") and report.get("ranking_method") == cfg.ranking_method \
            and report.get("ranking_settings", chosen.canonical()) == chosen.canonical():
        return [r["node"] for r in report["ranking"]]
    qdq_settings = chosen if (chosen.is_static and chosen.format == "qdq") else \
        QuantSettings(per_channel=chosen.per_channel, reduce_range=chosen.reduce_range,
                      calibration_images=chosen.calibration_images, recipe=chosen.recipe)
    calibration = ws.calibration if ws.calibration is not None else take(ws.eval_inputs.feeds, 0, cfg.n_calibration)
    key = hashlib.sha256("|".join([ws.prepared.sha256, chosen.canonical(), qdq_settings.canonical(),
                                   feeds_digest(calibration),
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
        rows = measure_ranking(run, chosen, qdq_settings, calibration)
        atomic_write_text(cached, json.dumps(rows))
    if record:
        report["ranking"] = rows
        report["ranking_method"] = cfg.ranking_method
        report["ranking_settings"] = chosen.canonical()
        run.state.save()
    return [r["node"] for r in rows]


def measure_ranking(run: TuneRun, chosen: QuantSettings, qdq_settings: QuantSettings,
                    calibration: Feeds) -> list[dict]:
    from coordinator.sensitivity import score_all

    cfg, ws = run.config, run.ws
    spec = spec_for(ws.prepared, qdq_settings, (), calibration_digest=ws.calibration_digest)
    full_qdq = build_candidate(ws.prepared, spec, cfg.out / "candidates", calibration, cfg.out / "cache")
    feeds = [take(calibration, i, i + 1) for i in range(min(cfg.ranking_images, num_samples(calibration)))]
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
