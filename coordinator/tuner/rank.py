"""Phase: rank the quantizable nodes by quantization sensitivity. Both methods come from one
measurement pass and are reported per node; the chosen one orders the search. The ranking
depends on the model, settings and data, never on the device, so it is cached by content: another
device class (or campaign) tuning the same model reuses it."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from coordinator.prepare import PreparedModel
from coordinator.quantize import build_candidate, ensure_calibration, quantizable_nodes, spec_for
from coordinator.tuner.catalog import RANKING_METHODS
from coordinator.tuner.config import TuneConfig
from coordinator.tuner.run import TuneRun
from shared.atomic import atomic_write_text
from shared.feeds import BATCHED, Feeds, load_npz, sample_feeds, take
from shared.feeds import digest as feeds_digest
from shared.settings import QuantSettings

log = logging.getLogger(__name__)

RANKING_CACHE_VERSION = "1"   # bump when the ranking's measurement changes


def rank(run: TuneRun, record: bool = True) -> list[str]:
    """Quantizable nodes under the current recipe (run.settings), most damaged first. `record`: it
    is the report's `ranking` (the primary device's), resumed when present; another device class's
    recipe only reads the content-keyed cache. The measurement runs in a build worker (it runs both
    models over the calibration batch with every activation kept: a hostile model's memory is that
    worker's)."""
    cfg, ws, report = run.config, run.ws, run.state.report
    chosen = run.settings
    if record and report.get("ranking") and report.get("ranking_method") == cfg.ranking_method \
            and report.get("ranking_settings", chosen.canonical()) == chosen.canonical():
        return [r["node"] for r in report["ranking"]]
    qdq_settings = chosen if (chosen.is_static and chosen.format == "qdq") else \
        QuantSettings(per_channel=chosen.per_channel, reduce_range=chosen.reduce_range,
                      calibration_images=chosen.calibration_images, recipe=chosen.recipe)
    if ws.calibration_file is not None:
        data, count = ws.calibration_file, None
    else:
        data, count = ws.eval_file, cfg.n_calibration
    rows = run.builder.pool.call("coordinator.tuner.rank:ranking_rows", cfg, ws.prepared, ws.calibration_digest,
                                 chosen, qdq_settings, data, count, ws.layout,
                                 what=f"the sensitivity ranking of {ws.prepared.source.name}")
    if record:
        run.state.set_sections({"ranking": rows, "ranking_method": cfg.ranking_method,
                                "ranking_settings": chosen.canonical()})
    return [r["node"] for r in rows]


def ranking_rows(cfg: TuneConfig, prepared: PreparedModel, calibration_digest: str, chosen: QuantSettings,
                 qdq_settings: QuantSettings, data_file: Path, count: int | None, layout: str = BATCHED) -> list[dict]:
    """In a build worker: the ranking rows, from the content-keyed cache or measured (and cached).
    `data_file`: the calibration feeds (.npz), or the evaluation feeds of which the first `count`;
    `layout`: what one of their samples is (shared/feeds.py)."""
    calibration = load_npz(data_file)
    if count is not None:
        calibration = take(calibration, 0, count)
    key = hashlib.sha256("|".join([prepared.sha256, chosen.canonical(), qdq_settings.canonical(),
                                   feeds_digest(calibration, layout),
                                   str(cfg.ranking_images), cfg.ranking_method, RANKING_CACHE_VERSION])
                         .encode()).hexdigest()[:20]
    cached = cfg.out / "cache" / f"ranking-{key}.json"
    if cached.is_file():
        try:
            return json.loads(cached.read_text())
        except ValueError as exc:   # a torn or edited cache file is measured again, not trusted
            log.warning("ignoring unreadable ranking cache %s: %s", cached, exc)
    rows = measure_ranking(cfg, prepared, calibration_digest, chosen, qdq_settings, calibration, layout)
    atomic_write_text(cached, json.dumps(rows))
    return rows


def measure_ranking(cfg: TuneConfig, prepared: PreparedModel, calibration_digest: str, chosen: QuantSettings,
                    qdq_settings: QuantSettings, calibration: Feeds, layout: str = BATCHED) -> list[dict]:
    from coordinator.sensitivity import score_all

    spec = spec_for(prepared, qdq_settings, (), calibration_digest=calibration_digest)
    ensure_calibration(prepared, spec, calibration, cfg.out / "cache", layout)   # from cached ranges, like any build
    full_qdq = build_candidate(prepared, spec, cfg.out / "candidates", calibration, cfg.out / "cache", layout=layout)
    feeds = sample_feeds(calibration, layout, cfg.ranking_images)
    by_method = score_all(prepared.path, full_qdq.path, feeds)  # one measurement pass, both methods
    allowed = set(quantizable_nodes(prepared, chosen))
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
