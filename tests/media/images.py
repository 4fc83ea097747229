"""Images made for the tests: text rendered with Pillow's built-in scalable font (no font files)."""

from __future__ import annotations

import io
import struct

from PIL import Image, ImageDraw, ImageFont


def rendered(
    lines: list[tuple[int, int, str]], size: tuple[int, int] = (800, 300), *, mode: str = "RGB"
) -> Image.Image:
    """An image with each ``(x, y, text)`` drawn in black at 40 px on white (on transparent for RGBA)."""
    background = (0, 0, 0, 0) if mode == "RGBA" else "white"  # transparent black, as many tools save it
    image = Image.new(mode, size, background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=40)
    for x, y, text in lines:
        draw.text((x, y), text, fill="black", font=font)
    return image


def encoded(image: Image.Image, image_format: str = "PNG", **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, image_format, **params)
    return out.getvalue()


def bmp_header_only(width: int, height: int) -> bytes:
    """A 1-bit BMP claiming ``width`` x ``height`` with no pixel data: a decompression bomb's header."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 1, 0, 0, 2835, 2835, 2, 0)
    palette = b"\x00\x00\x00\x00\xff\xff\xff\x00"
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset, 0, 0, offset) + info + palette
