"""Lazy engines: loaded once per process off the event loop, failures remembered, nothing downloaded."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bhiv_core.media.engine import EngineUnavailable, LazyEngine

ROOT = Path(__file__).resolve().parents[2]


async def test_concurrent_first_calls_load_once_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    threads = []

    def load() -> object:
        threads.append(threading.get_ident())
        time.sleep(0.2)
        return object()

    engine: LazyEngine[object] = LazyEngine("test", load)
    got = await asyncio.gather(*(engine.get() for _ in range(8)))
    assert engine.loads == 1
    assert len({id(g) for g in got}) == 1
    assert threads and threads[0] != loop_thread


async def test_a_failure_is_remembered_and_reported_with_its_reason() -> None:
    def load() -> object:
        raise ValueError("broken model")

    engine: LazyEngine[object] = LazyEngine("test", load)
    for _ in range(3):
        with pytest.raises(EngineUnavailable, match="broken model"):
            await engine.get()
    assert engine.loads == 1


_OFFLINE = r"""
import asyncio, io, socket, sys
from pathlib import Path

def refuse(*args, **kwargs):
    raise RuntimeError(f"network used: {args!r}")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

import rapidocr, pocketsphinx
models = Path(rapidocr.__file__).parent / "models"
before = sorted(p.name for p in models.iterdir())

from bhiv_core.media.image import OCR
from bhiv_core.media.audio import SOUNDFILE, SPEECH, decode_audio
from PIL import Image, ImageDraw, ImageFont
import numpy as np

image = Image.new("RGB", (500, 100), "white")
ImageDraw.Draw(image).text((20, 20), "Offline works", fill="black", font=ImageFont.load_default(size=40))
print("OCR:", OCR.load().read(np.asarray(image)).text)
decoded = decode_audio(SOUNDFILE.load(), Path(sys.argv[1]).read_bytes(), field="f")
print("SPEECH:", SPEECH.load().transcribe(decoded.samples).text)
after = sorted(p.name for p in models.iterdir())
assert before == after, (before, after)
"""


def test_engines_load_and_run_with_the_network_refused() -> None:
    """rapidocr and pocketsphinx load their packaged models: no socket is opened, no file added."""
    wav = ROOT / "tests" / "fixtures" / "speech_meeting.wav"
    done = subprocess.run(
        [sys.executable, "-c", _OFFLINE, str(wav)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OCR: Offline works" in done.stdout
    assert "tomorrow" in done.stdout
