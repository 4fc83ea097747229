"""The audio agent over real decoding and pocketsphinx: format, transcript, and what it refuses."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bhiv_core.agents.audio import AudioAgent
from bhiv_core.agents.base import AGENT_INTENTS, AgentRequest, Attachment, InputType
from bhiv_core.media.audio import soundfile_engine, speech_engine
from bhiv_core.runtime.errors import FailedPrecondition, InvalidArgument
from tests.agents.media_support import FIXTURES, IndexTools, index_tools, text_of

SPEECH_WAV = (FIXTURES / "speech_meeting.wav").read_bytes()


@pytest.fixture
async def tools(tmp_path: Path) -> AsyncIterator[IndexTools]:
    async with index_tools(tmp_path) as made:
        yield made


def _audio(data: bytes, index: int = 0) -> Attachment:
    return Attachment(index, InputType.AUDIO, "audio/wav", "meeting.wav", data)


def test_the_spec_is_the_audio_agent() -> None:
    spec = AudioAgent.spec
    assert (spec.id, spec.input_types, spec.intents) == ("audio", (InputType.AUDIO,), AGENT_INTENTS["audio"])


async def test_a_recording_is_described_and_transcribed(tools: IndexTools) -> None:
    started = time.perf_counter()
    text = await text_of(
        await AudioAgent().answer(AgentRequest("transcribe this", [_audio(SPEECH_WAV)]), tools)
    )
    print(f"\naudio agent answer (3.8 s WAV): {time.perf_counter() - started:.2f} s")
    assert text.startswith("WAV audio (PCM_16), 3.8 seconds, 22050 Hz, 1 channel (mono).")
    transcript = text.split('"')[1].split()
    assert "tomorrow" in transcript and "morning" in transcript


async def test_an_ogg_recording_is_transcribed(tools: IndexTools) -> None:
    samples, rate = soundfile.read(io.BytesIO(SPEECH_WAV), dtype="float32")
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format="OGG", subtype="VORBIS")
    text = await text_of(await AudioAgent().answer(AgentRequest("", [_audio(out.getvalue())]), tools))
    assert text.startswith("OGG audio (VORBIS)")
    assert "tomorrow" in text


async def test_without_speech_recognition_the_format_is_still_reported(tools: IndexTools) -> None:
    agent = AudioAgent(speech=speech_engine(module="bhiv_no_such_speech_package"))
    text = await text_of(await agent.answer(AgentRequest("", [_audio(SPEECH_WAV)]), tools))
    assert text.startswith("WAV audio (PCM_16), 3.8 seconds")
    assert "Transcription is unavailable here" in text and "bhiv_no_such_speech_package" in text
    assert "tomorrow" not in text


async def test_without_a_decoder_nothing_can_be_done(tools: IndexTools) -> None:
    agent = AudioAgent(decoder=soundfile_engine(module="bhiv_no_such_decoder"))
    with pytest.raises(FailedPrecondition, match="bhiv_no_such_decoder"):
        await agent.answer(AgentRequest("", [_audio(SPEECH_WAV)]), tools)


async def test_a_long_recording_says_it_was_cut(tools: IndexTools) -> None:
    out = io.BytesIO()
    soundfile.write(out, np.zeros(8000 * 7 * 60, dtype=np.int16), 8000, format="WAV", subtype="PCM_16")
    text = await text_of(await AudioAgent().answer(AgentRequest("", [_audio(out.getvalue())]), tools))
    assert text.startswith("WAV audio (PCM_16), 7.0 minutes, 8000 Hz")
    assert "Only the first 5.0 minutes of 7.0 minutes were transcribed." in text
    assert "No speech was recognised." in text


async def test_corrupt_audio_is_invalid_argument_on_its_field(tools: IndexTools) -> None:
    request = AgentRequest("", [_audio(SPEECH_WAV), _audio(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10, index=1)])
    with pytest.raises(InvalidArgument) as exc:
        await AudioAgent().answer(request, tools)
    assert [(v.field, v.reason) for v in exc.value.violations] == [
        ("attachments[1].data", "UNREADABLE_AUDIO")
    ]


async def test_webm_is_refused_as_unsupported(tools: IndexTools) -> None:
    with pytest.raises(InvalidArgument) as exc:
        await AudioAgent().answer(AgentRequest("", [_audio(b"\x1a\x45\xdf\xa3" + b"\x00" * 64)]), tools)
    assert exc.value.violations[0].reason == "UNSUPPORTED_AUDIO_FORMAT"


async def test_no_audio_attachment_is_invalid_argument(tools: IndexTools) -> None:
    with pytest.raises(InvalidArgument) as exc:
        await AudioAgent().answer(AgentRequest("transcribe"), tools)
    assert [(v.field, v.reason) for v in exc.value.violations] == [("attachments", "REQUIRED")]
