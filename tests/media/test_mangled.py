"""Mangled files: whatever bytes arrive, reading them ends in a result or INVALID_ARGUMENT, never a crash."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import soundfile
from PIL import ExifTags, Image

from bhiv_core.media.audio import decode_audio
from bhiv_core.media.image import for_ocr, inspect_image, open_image
from bhiv_core.runtime.errors import InvalidArgument
from tests.media.images import encoded, rendered

ROUNDS = 100
"""Mangled copies per format (seeded: a failure replays)."""

# Pillow warns about the corrupt EXIF and TIFF tags it skips: expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")


def _mangled(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        kind = rng.random()
        at = rng.randrange(len(out))
        if kind < 0.6:
            out[at] = rng.randrange(256)
        elif kind < 0.8:
            del out[at : at + rng.randint(1, 64)]
        else:
            out[at:at] = rng.randbytes(rng.randint(1, 64))
    return bytes(out[: rng.randint(len(out) // 2, len(out))] if rng.random() < 0.3 else out)


def _images() -> dict[str, bytes]:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Canon"
    exif[ExifTags.Base.Orientation] = 3
    exif.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitude] = (1.0, 2.0, 3.0)
    picture = rendered([(10, 10, "Hi")], (120, 60))
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    return {
        "png": encoded(picture, "PNG"),
        "jpeg": encoded(picture, "JPEG", exif=exif.tobytes()),
        "gif": encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "webp": encoded(picture, "WEBP"),
        "tiff": encoded(picture, "TIFF", exif=exif.tobytes()),
        "bmp": encoded(picture, "BMP"),
    }


@pytest.mark.parametrize("name", ["png", "jpeg", "gif", "webp", "tiff", "bmp"])
def test_mangled_images_are_read_or_invalid_argument(name: str) -> None:
    rng = random.Random(f"image-{name}")
    original = _images()[name]
    for _ in range(ROUNDS):
        try:
            with open_image(_mangled(original, rng), field="attachments[0].data") as image:
                inspect_image(image, field="attachments[0].data")
                for_ocr(image, field="attachments[0].data")
        except InvalidArgument as exc:
            assert exc.violations[0].field == "attachments[0].data"


def _sounds() -> dict[str, bytes]:
    tone = (0.3 * np.sin(np.arange(8000) / 5)).astype(np.float32)
    sounds = {}
    for file_format, subtype in (
        ("WAV", "PCM_16"),
        ("FLAC", None),
        ("OGG", "VORBIS"),
        ("MP3", "MPEG_LAYER_III"),
    ):
        out = io.BytesIO()
        soundfile.write(out, tone, 8000, format=file_format, subtype=subtype)
        sounds[file_format] = out.getvalue()
    return sounds


@pytest.mark.parametrize("name", ["WAV", "FLAC", "OGG", "MP3"])
def test_mangled_sounds_are_decoded_or_invalid_argument(name: str) -> None:
    rng = random.Random(f"sound-{name}")
    original = _sounds()[name]
    for _ in range(ROUNDS):
        try:
            decode_audio(soundfile, _mangled(original, rng), field="attachments[0].data")
        except InvalidArgument as exc:
            assert exc.violations[0].field == "attachments[0].data"
