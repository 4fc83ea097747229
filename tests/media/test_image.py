"""The image library: opening (formats, bombs, corrupt data), metadata (EXIF, GPS, DPI) and real OCR."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import ExifTags, Image

from bhiv_core.media.engine import EngineUnavailable
from bhiv_core.media.image import (
    MAX_IMAGE_PIXELS,
    MODEL_FILES,
    OCR,
    OcrLine,
    for_ocr,
    inspect_image,
    ocr_engine,
    open_image,
    reading_order,
)
from bhiv_core.runtime.errors import InvalidArgument
from tests.media.images import bmp_header_only, encoded, rendered

FIELD = "attachments[0].data"
COORDINATES = ((37.0, 23.0, 59.97), (122.0, 41.0, 7.31))
COORDINATE_TEXTS = ("37", "59.97", "122", "7.31")


def _violation(exc: pytest.ExceptionInfo[InvalidArgument]) -> tuple[str, str]:
    (violation,) = exc.value.violations
    return violation.field, violation.reason


def _camera_jpeg(*, gps: bool) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Canon"
    exif[ExifTags.Base.Model] = "Canon EOS 5D\x00\x07"
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.DateTime] = "2024:05:01 10:00:00"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2024:04:30 09:15:42"
    if gps:
        where = exif.get_ifd(ExifTags.IFD.GPSInfo)
        where[ExifTags.GPS.GPSLatitudeRef] = "N"
        where[ExifTags.GPS.GPSLatitude] = COORDINATES[0]
        where[ExifTags.GPS.GPSLongitudeRef] = "W"
        where[ExifTags.GPS.GPSLongitude] = COORDINATES[1]
    return encoded(Image.new("RGB", (64, 48), "gray"), "JPEG", exif=exif.tobytes(), dpi=(300, 300))


def test_format_size_mode_and_frames_are_reported() -> None:
    frames = [Image.new("RGB", (30, 20), color) for color in ("red", "green", "blue")]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    with open_image(data, field=FIELD) as image:
        info = inspect_image(image, field=FIELD)
    assert (info.format, info.mime_type, info.width, info.height, info.mode, info.frames) == (
        "GIF",
        "image/gif",
        30,
        20,
        "P",
        3,
    )
    assert not info.has_location


def test_exif_camera_date_orientation_and_dpi_are_reported() -> None:
    with open_image(_camera_jpeg(gps=False), field=FIELD) as image:
        info = inspect_image(image, field=FIELD)
    assert info.camera == "Canon EOS 5D"  # the make is not repeated; control characters are dropped
    assert info.taken == "2024:04:30 09:15:42"  # DateTimeOriginal before DateTime
    assert (info.orientation, info.orientation_text) == (6, "rotated 90° clockwise")
    assert info.dpi == (300, 300)
    assert not info.has_location


def test_gps_is_reported_as_present_and_never_returned() -> None:
    with open_image(_camera_jpeg(gps=True), field=FIELD) as image:
        info = inspect_image(image, field=FIELD)
    assert info.has_location
    assert not [text for text in COORDINATE_TEXTS if text in repr(info)]


def test_xmp_gps_tags_count_as_location() -> None:
    xmp = b'<x:xmpmeta><rdf:Description exif:GPSLatitude="48,51.48N"/></x:xmpmeta>'
    with open_image(encoded(Image.new("RGB", (8, 8)), "PNG", pnginfo=_xmp_png(xmp)), field=FIELD) as image:
        assert inspect_image(image, field=FIELD).has_location


def _xmp_png(xmp: bytes):  # type: ignore[no-untyped-def]
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    return info


def test_an_image_over_the_pixel_limit_is_refused_before_decoding() -> None:
    side = int(MAX_IMAGE_PIXELS**0.5) + 100
    data = encoded(Image.new("1", (side, side)), "PNG")  # tiny file, huge image
    assert len(data) < 200_000
    with pytest.raises(InvalidArgument) as exc:
        open_image(data, field=FIELD)
    assert _violation(exc) == (FIELD, "IMAGE_TOO_LARGE")


def test_a_header_past_pillows_bomb_limit_is_invalid_argument() -> None:
    data = bmp_header_only(30_000, 30_000)  # 900 million pixels claimed in 70 bytes
    with pytest.raises(InvalidArgument) as exc:
        open_image(data, field=FIELD)
    assert _violation(exc) == (FIELD, "IMAGE_TOO_LARGE")


@pytest.mark.parametrize(
    "data",
    [os.urandom(2048), b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", b"<svg xmlns='x'/>"],
    ids=["random", "eps", "svg"],
)
def test_unreadable_bytes_are_invalid_argument(data: bytes) -> None:
    with pytest.raises(InvalidArgument) as exc:
        open_image(data, field="attachments[2].data")
    assert _violation(exc) == ("attachments[2].data", "UNREADABLE_IMAGE")


def test_truncated_pixel_data_is_invalid_argument() -> None:
    whole = encoded(rendered([(20, 20, "truncated")]), "PNG")
    with pytest.raises(InvalidArgument) as exc:
        open_image(whole[: len(whole) // 2], field=FIELD)
    assert _violation(exc) == (FIELD, "CORRUPT_IMAGE")


def test_empty_data_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as exc:
        open_image(b"", field=FIELD)
    assert _violation(exc) == (FIELD, "EMPTY_IMAGE")


def test_reading_order_is_rows_top_to_bottom_then_left_to_right() -> None:
    right = OcrLine("right", 0.9, (400, 12, 500, 48))
    left = OcrLine("left", 0.9, (10, 10, 100, 50))
    below = OcrLine("below", 0.9, (10, 80, 100, 120))
    assert [ln.text for ln in reading_order([below, right, left])] == ["left", "right", "below"]


def test_exif_orientation_is_applied_before_reading() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored sideways: shown rotated 90° clockwise
    data = encoded(Image.new("RGB", (40, 10), "white"), "JPEG", exif=exif.tobytes())
    with open_image(data, field=FIELD) as image:
        assert for_ocr(image, field=FIELD).shape[:2] == (40, 10)


async def test_ocr_reads_rendered_lines_in_reading_order() -> None:
    engine = await OCR.get()
    image = rendered(
        [(30, 30, "OPEN DAILY 9 TO 5"), (30, 120, "Welcome to the library"), (30, 200, "No parking here")]
    )
    with open_image(encoded(image), field=FIELD) as opened:
        text = engine.read(for_ocr(opened, field=FIELD))
    print(f"\nOCR of an 800x300 PNG (3 lines): {text.seconds:.2f} s")
    assert [ln.text for ln in text.lines] == [
        "OPEN DAILY 9 TO 5",
        "Welcome to the library",
        "No parking here",
    ]
    assert all(0.5 <= ln.confidence <= 1 for ln in text.lines)


async def test_ocr_reads_black_text_on_a_transparent_background() -> None:
    engine = await OCR.get()
    image = rendered([(30, 30, "Transparent sign")], (600, 120), mode="RGBA")
    with open_image(encoded(image), field=FIELD) as opened:
        text = engine.read(for_ocr(opened, field=FIELD))
    assert "Transparent sign" in text.text


async def test_ocr_reads_a_jpeg_of_a_larger_photo_sized_image() -> None:
    engine = await OCR.get()
    image = rendered([(200, 900, "STOP"), (200, 1500, "Main Street")], (2400, 1800))
    with open_image(encoded(image, "JPEG", quality=85), field=FIELD) as opened:
        text = engine.read(for_ocr(opened, field=FIELD))
    print(f"\nOCR of a 2400x1800 JPEG (scaled to 2048): {text.seconds:.2f} s")
    assert [ln.text for ln in text.lines] == ["STOP", "Main Street"]


def test_a_missing_ocr_package_is_unavailable_with_its_name() -> None:
    engine = ocr_engine(module="bhiv_no_such_ocr_package")
    with pytest.raises(EngineUnavailable, match="bhiv_no_such_ocr_package"):
        engine.load()
    with pytest.raises(EngineUnavailable):
        engine.load()
    assert engine.loads == 1  # the failure is remembered


def test_missing_ocr_models_are_unavailable(tmp_path: Path) -> None:
    engine = ocr_engine(model_dir=tmp_path)
    with pytest.raises(EngineUnavailable, match="model files are missing"):
        engine.load()


def test_a_corrupt_model_file_is_unavailable(tmp_path: Path) -> None:
    for name in MODEL_FILES:
        (tmp_path / name).write_bytes(b"not an onnx model")
    with pytest.raises(EngineUnavailable, match="failed to load"):
        ocr_engine(model_dir=tmp_path).load()


def test_rgb_bytes_round_trip() -> None:
    # for_ocr hands rapidocr RGB; the engine reverses it to BGR itself.
    image = Image.new("RGB", (4, 4), (255, 0, 0))
    with open_image(encoded(image), field=FIELD) as opened:
        assert tuple(for_ocr(opened, field=FIELD)[0, 0]) == (255, 0, 0)
