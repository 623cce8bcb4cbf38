"""report.html without a browser: written by `coordinator tune`, columns that follow what results
contain (keys added by later versions included), old/partial/malformed reports rendered with a
visible note, hostile text escaped, `coordinator export-html` and its one-line errors."""
from __future__ import annotations

import copy
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from coordinator.cli import main
from coordinator.html import render_html
from coordinator.html.view import build
from shared.errors import DataError
from tests.report_support import HOSTILE_NODE, hostile_model, local_tune


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tune")
    assert local_tune(hostile_model(tmp / "hostile.onnx"), tmp / "out", "--no-reduce-range") == 0
    return tmp / "out"


@pytest.fixture()
def report(tuned) -> dict:
    return json.loads((tuned / "report.json").read_text())


class _Page(HTMLParser):
    """Tags, header classes, script bodies and visible text of a page."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self.text: list[str] = []
        self._in_script = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        (self.scripts if self._in_script else self.text).append(data)

    def classes(self, tag: str) -> set[str]:
        return {c for t, a in self.tags if t == tag for c in (a.get("class") or "").split()}

    @property
    def visible(self) -> str:
        return " ".join(self.text)


def test_tune_writes_a_self_contained_report_html_beside_report_json(tuned):
    page = (tuned / "report.html").read_text()
    parsed = _Page(page)
    assert len(page.encode()) < 5_000_000
    assert HOSTILE_NODE in parsed.visible                       # shown as text...
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page       # ...because it was escaped
    assert len(parsed.scripts) == 1 and "alert(1)" not in parsed.scripts[0]
    # nothing is loaded from anywhere: no src/href to another resource, and the CSP forbids it
    for tag, attrs in parsed.tags:
        assert "src" not in attrs, (tag, attrs)
        href = attrs.get("href")
        assert href is None or href.startswith("#") or href.startswith("data:"), (tag, attrs)
    csp = next(a["content"] for t, a in parsed.tags if a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp
    assert "local" in parsed.visible and "Layer sensitivity ranking" in parsed.visible


def test_columns_follow_what_the_results_contain(report):
    """Keys a later tuner adds (fidelity, latency spread, per-output metrics, a recommendation policy,
    a comparison section, a section nobody knows yet) appear without the renderer knowing them."""
    for i, cand in enumerate(report["candidates"]):
        for result in cand["results"].values():
            result.update({"output_sqnr_db": 30.0 + i, "kl_divergence": 0.01 * i, "latency_ratio_vs_fp32": 0.7,
                           "latency_ms_spread": 0.002, "outputs": {"logits": {"cosine": 0.99}},
                           "metrics": {"user_f1": 0.5}})
    summary = report["pareto"]["per_device"]["local"]
    summary.update({"recommended": None, "prefer": "latency",
                    "verdict": "quantization does not pay for tiny on local: best INT8 p50 0.05 ms vs FP32 0.04 ms"})
    report["comparison"] = {"divergences": [{"candidate": "abc", "why": "crash on npu"}], "threshold_pt": 2}
    report["energy_joules"] = [{"candidate": "abc", "joules": 1.25}]
    parsed = _Page(render_html(report))
    ths = parsed.classes("th")
    for key in ("col-output_sqnr_db", "col-kl_divergence", "col-latency_ratio_vs_fp32", "col-latency_ms_spread",
                "col-outputs-logits-cosine", "col-metrics-user_f1"):
        assert key in ths, key
    text = parsed.visible
    assert "output SQNR dB" in text and "outputs.logits cosine" in text and "metrics.user f1" in text
    assert "quantization does not pay for tiny on local" in text and "latency" in text
    assert "as the tuner reported it" in text and "crash on npu" in text
    assert "energy_joules" in text and "1.25" in text
    card = next(a for t, a in parsed.tags if t == "article" and a.get("data-device") == "local")
    assert card["data-recommended"] == "" and "none" in card["class"]


def test_old_partial_and_running_reports_render_what_they_have_with_a_note(report):
    old = {k: v for k, v in report.items() if k not in ("schema_version", "fp32", "pareto", "status", "devices")}
    text = _Page(render_html(old)).visible
    assert "no schema_version" in text and "no 'fp32' section" in text and "no 'pareto' section" in text
    assert "of unknown state" in text and "local" in text          # device taken from the results
    running = copy.deepcopy(report)
    running["status"] = {"state": "running"}
    text = _Page(render_html(running)).visible
    assert "still running" in text and "snapshot" in text
    newer = dict(report, schema_version=99)
    assert "newer than this renderer" in _Page(render_html(newer)).visible
    empty = {"model": {"path": "m.onnx"}, "candidates": []}
    assert "no candidate has been built yet" in _Page(render_html(empty)).visible


JUNK = ["junk", 3, None, [], {}, {"x": "y"}, [1, "two", {"three": 3}], True]


@pytest.mark.parametrize("junk", JUNK, ids=[repr(j)[:20] for j in JUNK])
def test_every_section_may_be_missing_or_malformed(report, junk):
    for key in list(report):
        if key == "candidates" and not isinstance(junk, list):
            with pytest.raises(DataError, match="'candidates' is a"):
                render_html({**report, key: junk})
            continue
        render_html({**report, key: junk})
        if key not in ("candidates", "model"):
            render_html({k: v for k, v in report.items() if k != key})
    mangled = copy.deepcopy(report)
    mangled["candidates"] += ["not a candidate", {"no": "id"}, {"id": "x", "results": "junk"},
                              {"id": "y", "results": {"local": "junk", "other": {"status": 3}}}]
    mangled["candidates"][0]["results"]["local"].update({"top1_agreement": "high", "latency_ms_p50": float("nan")})
    text = _Page(render_html(mangled)).visible
    assert "2 candidate entries are malformed" in text


def test_comparison_flags_divergences_across_device_classes():
    def res(status="ok", agree=0.99, ratio=0.8):
        return {"status": status, "top1_agreement": agree, "latency_ms_p50": 1.0 * ratio,
                "latency_ratio_vs_fp32": ratio} if status == "ok" else {"status": status, "crash_cause": "signal:SIGSEGV"}
    cands = {"same": (res(), res()), "crash": (res(), res("crash")), "lower": (res(agree=0.99), res(agree=0.90)),
             "speed": (res(ratio=0.7), res(ratio=1.4))}
    report = {"schema_version": 1, "model": {"path": "m.onnx"}, "devices": ["a", "b"], "status": {"state": "done"},
              "candidates": [{"id": cid, "excluded_nodes": [], "size_bytes": 10,
                              "results": {"a": ra, "b": rb}} for cid, (ra, rb) in cands.items()],
              "pareto": {"per_device": {"a": {"recommended": "same"}, "b": {"recommended": "lower"}}}}
    view = build(report)
    flags = {row.cand: row.cells[-1].text for row in view.comparison.rows}
    assert flags["same"] == ""
    assert flags["crash"] == "ok on a; crash on b"
    assert flags["lower"] == "top-1 agreement 9.0 pt lower on b"
    assert flags["speed"] == "faster than FP32 on a, slower on b"
    assert "each device class recommends its own candidate" in view.comparison_notes[0]
    odd = {row.cand: [c.text for c in row.cells if "odd" in c.cls] for row in view.comparison.rows}
    assert odd["crash"] == ["crash"] and odd["lower"] == ["90.0"] and odd["speed"] == ["1.40x"]


def test_export_html_writes_the_page_and_refuses_what_is_not_a_report(tuned, tmp_path, capsys):
    out = tmp_path / "page" / "r.html"
    assert main(["export-html", str(tuned / "report.json"), "-o", str(out)]) == 0
    assert out.read_text().startswith("<!doctype html>")
    assert f"wrote {out}" in capsys.readouterr().out
    cases = {"not-json.json": "this is { not json", "list.json": "[1, 2]", "other.json": '{"name": "x"}',
             "typed.json": '{"model": {}, "candidates": "many"}'}
    for name, content in cases.items():
        (tmp_path / name).write_text(content)
    for name in [*cases, "missing.json"]:
        assert main(["export-html", str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: report:") and err.count("\n") == 1 and "Traceback" not in err, err
        assert not (tmp_path / "report.html").exists()
