"""Images: format, size and metadata with Pillow, and the text in them by OCR (rapidocr + onnxruntime).

:func:`inspect_image` opens an image from bytes (a fixed list of raster formats, never a format that
runs an external program such as EPS), refuses one whose pixel count is over a limit before any pixel
is decoded (decompression bombs), decodes its first frame and reports what a person would want to
know: format, width x height, mode, frames, camera, date, orientation and DPI. Location metadata
(EXIF GPS, XMP GPS tags) is only said to be present: coordinates never leave this module.

:class:`OcrEngine` reads the text of an image with rapidocr, whose wheel carries its ONNX models;
they are loaded from the package's own ``models`` folder by explicit path, so rapidocr never reaches
for its download URLs. :data:`OCR` is the process's engine, loaded on first use.
"""

from __future__ import annotations

import io
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from PIL import ExifTags, Image, ImageDraw, ImageFont, ImageOps

from bhiv_core.media.engine import EngineUnavailable, LazyEngine, import_engine
from bhiv_core.runtime.errors import FieldViolation, InvalidArgument

__all__ = [
    "FORMATS",
    "MAX_IMAGE_PIXELS",
    "OCR",
    "ImageInfo",
    "OcrEngine",
    "OcrLine",
    "OcrText",
    "for_ocr",
    "inspect_image",
    "ocr_engine",
    "open_image",
    "reading_order",
]

FORMATS: Final = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
"""The formats read: raster formats decoded in-process (no EPS/PDF, which would start Ghostscript)."""

MAX_IMAGE_PIXELS: Final = 40_000_000
"""The most pixels (width x height) of an image read: below Pillow's own bomb limit
(``Image.MAX_IMAGE_PIXELS``, about 89 million, warned; twice that refused), so a first frame
decodes in at most ~160 MB (RGBA)."""

OCR_MAX_SIDE: Final = 2048
"""Images are scaled down to this longest side before OCR (the detector works at 960 anyway)."""

MODEL_FILES: Final = ("PP-OCRv6_det_small.onnx", "PP-OCRv6_rec_small.onnx")
"""The detection and recognition models of rapidocr's wheel (its ``models`` folder)."""

_TEXT_LIMIT: Final = 80
_ORIENTATIONS: Final = {
    1: "normal",
    2: "mirrored horizontally",
    3: "rotated 180°",
    4: "mirrored vertically",
    5: "mirrored and rotated 90° counter-clockwise",
    6: "rotated 90° clockwise",
    7: "mirrored and rotated 90° clockwise",
    8: "rotated 90° counter-clockwise",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_XMP_GPS = re.compile(rb"GPS(?:Latitude|Longitude|Altitude|Coordinates)|exif:GPS", re.I)


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What an image is.

    Attributes:
        format: Pillow's format name (``PNG``, ``JPEG``...).
        mime_type: Its media type.
        width: In pixels.
        height: In pixels.
        mode: Pillow's mode (``RGB``, ``RGBA``, ``L``, ``P``...).
        frames: Frames (pages, animation frames); 1 for a still image.
        camera: Make and model from EXIF, or empty.
        taken: The EXIF date and time of capture (``YYYY:MM:DD HH:MM:SS``), or empty.
        software: The EXIF software, or empty.
        orientation: The EXIF orientation (1-8), 0 when absent.
        dpi: Horizontal and vertical resolution in dots per inch, when recorded.
        has_location: Whether it carries location metadata (EXIF GPS or XMP GPS tags).

    """

    format: str
    mime_type: str
    width: int
    height: int
    mode: str
    frames: int
    camera: str = ""
    taken: str = ""
    software: str = ""
    orientation: int = 0
    dpi: tuple[int, int] | None = None
    has_location: bool = False

    @property
    def orientation_text(self) -> str:
        """The orientation for people, or empty when absent."""
        return _ORIENTATIONS.get(self.orientation, "")


@dataclass(frozen=True, slots=True)
class OcrLine:
    """A line of text found in an image.

    Attributes:
        text: The text read.
        confidence: The recogniser's score, 0-1.
        box: Left, top, right, bottom in pixels of the image as read (orientation corrected).

    """

    text: str
    confidence: float
    box: tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class OcrText:
    """The text of an image: lines in reading order, and how long reading took."""

    lines: tuple[OcrLine, ...]
    seconds: float

    @property
    def text(self) -> str:
        """The lines joined by newlines."""
        return "\n".join(line.text for line in self.lines)


def _invalid(field: str, description: str, reason: str) -> InvalidArgument:
    return InvalidArgument(violations=[FieldViolation(field, description, reason)])


def _clean(value: Any) -> str:
    """A metadata value as short, single-line text (EXIF strings are the sender's text)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore")
    text = _CONTROL.sub(" ", str(value)).strip()
    return text if len(text) <= _TEXT_LIMIT else text[: _TEXT_LIMIT - 1] + "…"


def open_image(data: bytes, *, field: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Opens an image and decodes its first frame, refusing bombs and unreadable data.

    Args:
        data: The file's bytes.
        field: The request field path of the data, for errors.
        max_pixels: The most pixels accepted.

    Raises:
        InvalidArgument: Not an image of :data:`FORMATS`, corrupt, or over ``max_pixels``.

    """
    if not data:
        raise _invalid(field, "the image is empty", "EMPTY_IMAGE")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise _invalid(field, f"the image is too large to read ({exc})", "IMAGE_TOO_LARGE") from exc
    except Exception as exc:  # UnidentifiedImageError; a plugin choking on a hostile header (IndexError...)
        raise _invalid(
            field, f"not a readable image (accepted: {', '.join(FORMATS)})", "UNREADABLE_IMAGE"
        ) from exc
    width, height = image.size
    if width <= 0 or height <= 0 or width * height > max_pixels:
        image.close()
        raise _invalid(
            field,
            f"the image is {width}x{height} pixels; at most {max_pixels} pixels are read",
            "IMAGE_TOO_LARGE",
        )
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise _invalid(field, "the image is too large to read", "IMAGE_TOO_LARGE") from exc
    except Exception as exc:
        # Pillow reports truncated pixel data as OSError ("image file is truncated"); hostile data
        # reaches plugins' other errors (IndexError, struct.error...). All of it is the sender's fault.
        image.close()
        raise _invalid(field, f"the image data is corrupt ({_clean(exc)})", "CORRUPT_IMAGE") from exc
    return image


def inspect_image(image: Image.Image, *, field: str) -> ImageInfo:
    """Reports what an opened image is (see :func:`open_image`); never returns coordinates.

    Raises:
        InvalidArgument: Its metadata or later frames are corrupt (on ``field``).

    """
    try:
        return _inspect(image)
    except Exception as exc:  # parsing hostile EXIF/frames raises whatever the plugin trips on
        raise _invalid(field, f"the image's metadata is corrupt ({_clean(exc)})", "CORRUPT_IMAGE") from exc


def for_ocr(image: Image.Image, *, field: str) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The first frame upright (EXIF orientation applied), RGB on white, at most :data:`OCR_MAX_SIDE`.

    Raises:
        InvalidArgument: The image cannot be converted (on ``field``).

    """
    try:
        return _for_ocr(image)
    except Exception as exc:
        raise _invalid(field, f"the image data is corrupt ({_clean(exc)})", "CORRUPT_IMAGE") from exc


def _inspect(image: Image.Image) -> ImageInfo:
    exif = image.getexif()
    make = _clean(exif.get(ExifTags.Base.Make, ""))
    model = _clean(exif.get(ExifTags.Base.Model, ""))
    camera = model if make and model.lower().startswith(make.lower()) else f"{make} {model}".strip()
    exif_ifd = exif.get_ifd(ExifTags.IFD.Exif)
    taken = _clean(exif_ifd.get(ExifTags.Base.DateTimeOriginal) or exif.get(ExifTags.Base.DateTime, ""))
    orientation = exif.get(ExifTags.Base.Orientation, 0)
    has_location = ExifTags.IFD.GPSInfo in exif and bool(exif.get_ifd(ExifTags.IFD.GPSInfo))
    for key in ("xmp", "XML:com.adobe.xmp"):
        xmp = image.info.get(key)
        if isinstance(xmp, str):
            xmp = xmp.encode("utf-8", "ignore")
        if isinstance(xmp, bytes) and _XMP_GPS.search(xmp):
            has_location = True
    dpi = image.info.get("dpi")
    resolution = None
    if isinstance(dpi, tuple) and len(dpi) == 2:
        try:
            resolution = (round(float(dpi[0])), round(float(dpi[1])))
        except (TypeError, ValueError):
            resolution = None
    image_format = image.format or "unknown"
    return ImageInfo(
        format=image_format,
        mime_type=Image.MIME.get(image_format, "application/octet-stream"),
        width=image.width,
        height=image.height,
        mode=image.mode,
        frames=int(getattr(image, "n_frames", 1) or 1),
        camera=camera,
        taken=taken,
        software=_clean(exif.get(ExifTags.Base.Software, "")),
        orientation=orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 0,
        dpi=resolution if resolution and all(0 < v < 100_000 for v in resolution) else None,
        has_location=has_location,
    )


def _for_ocr(image: Image.Image) -> np.ndarray[Any, np.dtype[np.uint8]]:
    upright = ImageOps.exif_transpose(image) or image
    if upright.mode in ("RGBA", "LA", "PA") or (upright.mode == "P" and "transparency" in upright.info):
        rgba = upright.convert("RGBA")
        flat = Image.new("RGB", rgba.size, "white")
        flat.paste(rgba, mask=rgba.getchannel("A"))
        upright = flat
    elif upright.mode != "RGB":
        upright = upright.convert("RGB")
    if max(upright.size) > OCR_MAX_SIDE:
        upright = upright.copy()
        upright.thumbnail((OCR_MAX_SIDE, OCR_MAX_SIDE))
    return np.asarray(upright, dtype=np.uint8)


def reading_order(lines: list[OcrLine]) -> list[OcrLine]:
    """Sorts lines top to bottom, and left to right within a row (lines whose middles overlap)."""
    rows: list[list[OcrLine]] = []
    for line in sorted(lines, key=lambda ln: (ln.box[1] + ln.box[3]) / 2):
        middle = (line.box[1] + line.box[3]) / 2
        if rows:
            last = rows[-1][0]
            if last.box[1] <= middle <= last.box[3]:
                rows[-1].append(line)
                continue
        rows.append([line])
    return [line for row in rows for line in sorted(row, key=lambda ln: ln.box[0])]


class OcrEngine:
    """rapidocr over onnxruntime, with the models of its wheel (one call at a time)."""

    def __init__(self, rapidocr: Any, model_dir: Path):
        # Detection at 960 px (longest side) and no 180° classifier: several times faster than
        # rapidocr's defaults on these machines with the same text; orientation comes from EXIF.
        # One intra-op thread: requests run side by side on a small machine.
        params = {
            "Global.log_level": "error",
            "Global.use_cls": False,
            "Det.model_path": str(model_dir / MODEL_FILES[0]),
            "Rec.model_path": str(model_dir / MODEL_FILES[1]),
            "Det.limit_type": "max",
            "Det.limit_side_len": 960,
            "EngineConfig.onnxruntime.intra_op_num_threads": 1,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
        self._engine = rapidocr.RapidOCR(params=params)
        self._lock = threading.Lock()

    def read(self, pixels: np.ndarray[Any, np.dtype[np.uint8]]) -> OcrText:
        """Reads the text of an RGB image (blocking: call it from a worker thread)."""
        started = time.perf_counter()
        with self._lock:
            # rapidocr takes BGR like OpenCV.
            result = self._engine(np.ascontiguousarray(pixels[:, :, ::-1]))
        lines = []
        boxes = result.boxes if result.boxes is not None else []
        for box, text, score in zip(boxes, result.txts or (), result.scores or (), strict=False):
            xs = [float(p[0]) for p in box]
            ys = [float(p[1]) for p in box]
            cleaned = _CONTROL.sub(" ", str(text)).strip()
            if cleaned:
                lines.append(
                    OcrLine(cleaned, float(score), (int(min(xs)), int(min(ys)), int(max(xs)), int(max(ys))))
                )
        return OcrText(tuple(reading_order(lines)), time.perf_counter() - started)


def _warm_up(engine: OcrEngine) -> None:
    """Reads a rendered word, so every model is loaded (and known to work) before the first request."""
    image = Image.new("RGB", (160, 64), "white")
    ImageDraw.Draw(image).text((12, 12), "OK", fill="black", font=ImageFont.load_default(size=32))
    engine.read(np.asarray(image))


def ocr_engine(module: str = "rapidocr", model_dir: Path | None = None) -> LazyEngine[OcrEngine]:
    """A lazily loaded OCR engine.

    Args:
        module: The package to import (tests name a missing one).
        model_dir: Where the ONNX models are; the package's own ``models`` folder by default.

    """

    def load() -> OcrEngine:
        rapidocr = import_engine(module)
        folder = model_dir or Path(str(rapidocr.__file__)).parent / "models"
        missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
        if missing:
            raise EngineUnavailable(f"the OCR model files are missing ({', '.join(missing)})")
        engine = OcrEngine(rapidocr, folder)
        _warm_up(engine)
        return engine

    return LazyEngine("OCR", load)


OCR: Final = ocr_engine()
"""The process's OCR engine (loaded on first use)."""
