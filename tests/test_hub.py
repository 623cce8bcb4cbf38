"""`hub:NAME[@OPSET]` through the ONNX Model Hub's cache: a cache the test builds (onnx.hub's
manifest format and file layout, real sha256), never the network: every socket to anything but
loopback fails the test, and onnx.hub is either absent (as from onnx 1.21 on) or a stand-in that
records what qfarm asked of it."""
from __future__ import annotations

import hashlib
import json
import socket
import sys
import types
import urllib.error
from pathlib import Path

import pytest

from coordinator import hub
from shared.errors import DataError, InvalidArgument, NotFound, QfarmError
from tests.models import make_classifier

MODEL_PATH = "validated/vision/classification/tinynet/model/tinynet-{opset}.onnx"


def manifest_entry(name: str, opset: int, data: bytes | None, path: str | None = None) -> dict:
    """A row as the hub's ONNX_HUB_MANIFEST.json has them."""
    meta = {"tags": ["vision", "classification"], "io_ports": {"inputs": [{"name": "input", "shape": ["N", 3, 32, 32],
                                                                           "type": "tensor(float)"}]}}
    if data is not None:
        meta.update(model_sha=hashlib.sha256(data).hexdigest(), model_bytes=len(data))
    return {"model": name, "model_path": path or MODEL_PATH.format(opset=opset), "onnx_version": "1.14",
            "opset_version": opset, "metadata": meta}


def build_cache(folder: Path, tmp: Path, opsets=(13, 17), cached=(13, 17), extra=()) -> dict[int, Path]:
    """A hub cache with TinyNet at `opsets` in the manifest, the files of `cached` saved where
    onnx.hub.load saves them (<folders of model_path>/<sha256>_<file name>)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, files = list(extra), {}
    for opset in opsets:
        data = make_classifier(tmp / f"tiny-{opset}.onnx", opset=opset, seed=opset).read_bytes()
        row = manifest_entry("TinyNet", opset, data)
        rows.append(row)
        target = folder / Path(row["model_path"]).parent / f"{row['metadata']['model_sha']}_tinynet-{opset}.onnx"
        if opset in cached:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        files[opset] = target
    rows.append(manifest_entry("ResNet50", 12, b"not cached"))
    rows.append(manifest_entry("MobileNet v2-1.0", 12, b"not cached either"))
    (folder / hub.MANIFEST).write_text(json.dumps(rows))
    return files


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any socket to a non-loopback address fails the test (loopback stays open for the farm)."""
    attempts: list[object] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def loopback(host) -> bool:
        return host in ("localhost", "127.0.0.1", "::1", "") or str(host).startswith("127.")

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not loopback(address[0]):
            attempts.append(address)
            raise OSError(f"test: no network ({address})")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not loopback(host):
            attempts.append(host)
            raise socket.gaierror(f"test: no network ({host})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setitem(sys.modules, "onnx.hub", None)      # as onnx >= 1.21: `import onnx.hub` fails
    monkeypatch.delenv("ONNX_HOME", raising=False)
    yield attempts
    assert attempts == [], f"the network was reached for: {attempts}"


def test_a_cached_model_resolves_offline_highest_opset_first(tmp_path):
    files = build_cache(tmp_path / "hubcache", tmp_path)
    path, entry = hub.resolve("hub:TinyNet", tmp_path / "hubcache")
    assert path == files[17] and entry.opset == 17 and entry.file_name == "tinynet-17.onnx"
    path, entry = hub.resolve("hub:tinynet@13", tmp_path / "hubcache")       # names match case-insensitively
    assert path == files[13] and entry.opset == 13


def test_the_default_cache_is_onnx_hubs_own(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNX_HOME", str(tmp_path / "onnxhome"))
    files = build_cache(tmp_path / "onnxhome" / "hub", tmp_path)
    assert hub.default_dir() == tmp_path / "onnxhome" / "hub"
    assert hub.resolve("hub:TinyNet@13")[0] == files[13]


@pytest.mark.parametrize("ref, error, needle", [
    ("hub:TinyNett", NotFound, "hub: hub:TinyNett: no model named 'TinyNett' in the hub manifest {cache}/"
                               "ONNX_HUB_MANIFEST.json (3 models); close matches: TinyNet"),
    ("hub:mobilenet", NotFound, "close matches: MobileNet v2-1.0"),
    ("hub:TinyNet@11", NotFound, "hub: hub:TinyNet@11: TinyNet has no version with opset 11 in the hub manifest "
                                 "(opsets: 13, 17)"),
    ("hub:", InvalidArgument, "'hub:' is not a hub model reference hub:NAME or hub:NAME@OPSET"),
    ("hub:TinyNet@x", InvalidArgument, "'hub:TinyNet@x' is not a hub model reference"),
    ("hub:../../etc/passwd", InvalidArgument, "is not a hub model reference"),
    ("hub:TinyNet@0", InvalidArgument, "opset 0 must be between 1 and 1000"),
])
def test_a_bad_or_unknown_name_is_one_line_with_close_matches(tmp_path, ref, error, needle):
    build_cache(tmp_path / "hubcache", tmp_path)
    with pytest.raises(error) as caught:
        hub.resolve(ref, tmp_path / "hubcache")
    assert needle.format(cache=tmp_path / "hubcache") in str(caught.value) and "\n" not in str(caught.value)


def test_offline_a_model_missing_from_the_cache_says_what_and_where(tmp_path):
    files = build_cache(tmp_path / "hubcache", tmp_path, cached=(13,))
    with pytest.raises(NotFound) as caught:
        hub.resolve("hub:TinyNet", tmp_path / "hubcache")
    message = str(caught.value)
    assert message.startswith(f"hub: hub:TinyNet (TinyNet, opset 17, {MODEL_PATH.format(opset=17)}) is not in the "
                              f"hub cache: {files[17]} is missing and onnx ")
    assert "has no onnx.hub to download it" in message and "sha256 " in message and "\n" not in message


def test_without_a_manifest_the_cache_folder_is_named(tmp_path):
    with pytest.raises(NotFound) as caught:
        hub.resolve("hub:TinyNet", tmp_path / "empty")
    assert f"the hub cache {tmp_path / 'empty'} has no ONNX_HUB_MANIFEST.json" in str(caught.value)


def test_a_corrupted_cached_file_or_manifest_is_refused(tmp_path):
    files = build_cache(tmp_path / "hubcache", tmp_path)
    files[17].write_bytes(files[17].read_bytes()[:-10])
    with pytest.raises(DataError, match="has sha256 .* the manifest says .*; delete it and fetch it again"):
        hub.resolve("hub:TinyNet@17", tmp_path / "hubcache")
    (tmp_path / "hubcache" / hub.MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match="is not JSON"):
        hub.resolve("hub:TinyNet@13", tmp_path / "hubcache")
    for bad in ("../../outside.onnx", "/etc/passwd", "a/./b.onnx"):
        (tmp_path / "hubcache" / hub.MANIFEST).write_text(json.dumps([manifest_entry("Evil", 12, b"x", bad)]))
        with pytest.raises(DataError, match="must be a relative path inside the cache"):
            hub.resolve("hub:Evil", tmp_path / "hubcache")


def fake_onnx_hub(monkeypatch, tmp_path, fail: Exception | None = None) -> list:
    """A stand-in for onnx.hub (onnx < 1.21) with its API: get_dir/set_dir/load/list_models. `load`
    saves the model where the real one does, from the test's own bytes."""
    calls: list = []
    module = types.ModuleType("onnx.hub")
    state = {"dir": str(tmp_path / "default-hub")}
    module.get_dir = lambda: state["dir"]

    def set_dir(new_dir):
        calls.append(("set_dir", new_dir))
        state["dir"] = new_dir

    def load(model, repo="onnx/models:main", opset=None, force_reload=False, silent=False):
        calls.append(("load", model, opset, silent, state["dir"]))
        if fail is not None:
            raise fail
        data = make_classifier(tmp_path / f"tiny-{opset}.onnx", opset=opset, seed=opset).read_bytes()
        row = manifest_entry(model, opset, data)
        target = Path(state["dir"]) / Path(row["model_path"]).parent / f"{row['metadata']['model_sha']}_" \
            f"{Path(row['model_path']).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    module.set_dir, module.load = set_dir, load
    module.list_models = lambda *a, **k: calls.append(("list_models",)) or []
    monkeypatch.setitem(sys.modules, "onnx.hub", module)
    return calls


def test_a_missing_model_is_fetched_through_onnx_hub_into_the_given_cache(tmp_path, monkeypatch):
    files = build_cache(tmp_path / "hubcache", tmp_path, cached=(13,))
    calls = fake_onnx_hub(monkeypatch, tmp_path)
    path, entry = hub.resolve("hub:TinyNet", tmp_path / "hubcache")
    assert path == files[17] and path.is_file()
    assert calls == [("set_dir", str(tmp_path / "hubcache")), ("load", "TinyNet", 17, True, str(tmp_path / "hubcache")),
                     ("set_dir", str(tmp_path / "default-hub"))]          # the caller's hub dir is restored
    assert hub.resolve("hub:TinyNet", tmp_path / "hubcache")[0] == path and len(calls) == 3   # cached now


def test_offline_with_onnx_hub_the_download_failure_is_named(tmp_path, monkeypatch):
    build_cache(tmp_path / "hubcache", tmp_path, cached=())
    fake_onnx_hub(monkeypatch, tmp_path, fail=urllib.error.URLError("[Errno -3] Temporary failure in name resolution"))
    with pytest.raises(NotFound) as caught:
        hub.resolve("hub:TinyNet@13", tmp_path / "hubcache")
    assert "is not in the hub cache" in str(caught.value)
    assert "the download through onnx.hub failed (URLError: <urlopen error [Errno -3] Temporary failure" \
        in str(caught.value)


def test_tune_takes_a_hub_model_and_reports_its_cached_file(tmp_path, images_dir, capsys):
    from coordinator import cli
    from tests.test_tune_core import TUNE_ARGS

    files = build_cache(tmp_path / "hubcache", tmp_path)
    out = tmp_path / "out"
    code = cli.main(["tune", "hub:TinyNet@17", "--hub-dir", str(tmp_path / "hubcache"), "--images", str(images_dir),
                     "--out", str(out), *TUNE_ARGS, "--max-candidates", "2", "--threads", "1"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["path"] == str(files[17]) and len(report["candidates"]) == 2
    printed = capsys.readouterr().out.replace("\n", "")            # rich wraps long paths
    assert "hub:TinyNet@17:" in printed and str(files[17]) in printed
    code = cli.main(["tune", "hub:TinyNet@16", "--hub-dir", str(tmp_path / "hubcache"), "--images", str(images_dir),
                     "--out", str(tmp_path / "out2"), *TUNE_ARGS])
    assert code == 2 and not (tmp_path / "out2").exists()
    assert capsys.readouterr().err.strip() == ("error: hub: hub:TinyNet@16: TinyNet has no version with opset 16 in "
                                               "the hub manifest (opsets: 13, 17)")


def test_on_the_farm_the_client_resolves_and_uploads_the_hub_file(tmp_path, images_dir):
    from coordinator.cli import build_parser
    from coordinator.farm.commands import spec_from_tune_args
    from coordinator.farm.spec import spec_from_local
    from coordinator.testing import Farm
    from tests.test_tune_core import TUNE_ARGS

    files = build_cache(tmp_path / "hubcache", tmp_path)
    args = build_parser().parse_args(["tune", "hub:TinyNet@13", "--hub-dir", str(tmp_path / "hubcache"), "--images",
                                      str(images_dir), "--out", str(tmp_path / "out"), *TUNE_ARGS,
                                      "--max-candidates", "1", "--coordinator", "127.0.0.1:1", "--devices", "cpu-a"])
    spec = spec_from_tune_args(args)
    (model,) = spec.models
    assert spec.name == "TinyNet" and model.name == "tinynet-13" and model.file.local == files[13]
    assert model.file.name == "tinynet-13.onnx" and model.file.sha256 == files[13].name.split("_")[0]
    with Farm(tmp_path / "farm", agents={"cpu-a": "ort"}) as farm:
        report = farm.run_campaign(spec)
    assert report["candidates"] and all(c["results"]["cpu-a"]["status"] == "ok" for c in report["candidates"])
    with pytest.raises(QfarmError, match="models\\[0\\].path: hub: hub:Nope: no model named 'Nope'"):
        spec_from_local({"devices": ["cpu-a"], "models": [{"path": "hub:Nope"}], "data": {"images": str(images_dir)}},
                        "spec.toml", tmp_path, hub_dir=tmp_path / "hubcache")


def test_the_guard_itself_stops_a_download(no_network):
    """What the other tests rely on: urllib (as onnx.hub uses it) cannot leave this machine here."""
    import urllib.request

    with pytest.raises(OSError):
        urllib.request.urlopen("https://raw.githubusercontent.com/onnx/models/main/ONNX_HUB_MANIFEST.json", timeout=2)
    assert no_network == ["raw.githubusercontent.com"]
    no_network.clear()
