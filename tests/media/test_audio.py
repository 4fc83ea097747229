"""The audio library: decoding (WAV/FLAC/OGG/MP3, corrupt, unsupported), resampling, real transcription."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bhiv_core.media.audio import SAMPLE_RATE, SPEECH, decode_audio, resample, speech_engine
from bhiv_core.media.engine import EngineUnavailable
from bhiv_core.runtime.errors import InvalidArgument

FIELD = "attachments[0].data"
SPEECH_WAV = Path(__file__).resolve().parents[1] / "fixtures" / "speech_meeting.wav"
KEY_WORDS = ("tomorrow", "morning")


def _speech() -> tuple[np.ndarray, int]:
    samples, rate = soundfile.read(SPEECH_WAV, dtype="float32")
    return samples, rate


def _encoded(samples: np.ndarray, rate: int, file_format: str, subtype: str | None = None) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format=file_format, subtype=subtype)
    return out.getvalue()


def _violation(exc: pytest.ExceptionInfo[InvalidArgument]) -> tuple[str, str, str]:
    (violation,) = exc.value.violations
    return violation.field, violation.reason, violation.description


def test_the_fixture_is_decoded_with_its_format() -> None:
    decoded = decode_audio(soundfile, SPEECH_WAV.read_bytes(), field=FIELD)
    info = decoded.info
    assert (info.format, info.subtype, info.sample_rate, info.channels) == ("WAV", "PCM_16", 22050, 1)
    assert 3.5 < info.duration < 4.2
    assert abs(len(decoded.samples) - info.duration * SAMPLE_RATE) <= 2
    assert decoded.samples.dtype == np.float32
    assert not decoded.cut


@pytest.mark.parametrize(
    ("file_format", "subtype"), [("FLAC", None), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")]
)
async def test_converted_speech_is_decoded_and_transcribed(file_format: str, subtype: str | None) -> None:
    samples, rate = _speech()
    data = _encoded(samples, rate, file_format, subtype)
    decoded = decode_audio(soundfile, data, field=FIELD)
    assert decoded.info.format == file_format
    assert abs(decoded.info.duration - len(samples) / rate) < 0.2
    transcript = (await SPEECH.get()).transcribe(decoded.samples)
    print(f"\n{file_format}: {transcript.text!r} in {transcript.seconds:.2f} s")
    assert all(word in transcript.text.split() for word in KEY_WORDS), transcript.text


async def test_stereo_48khz_speech_is_downmixed_resampled_and_transcribed() -> None:
    samples, rate = _speech()
    count = int(len(samples) * 48_000 / rate)
    upsampled = np.interp(np.arange(count) * rate / 48_000, np.arange(len(samples)), samples)
    stereo = np.stack([upsampled, 0.5 * upsampled], axis=1).astype(np.float32)
    decoded = decode_audio(soundfile, _encoded(stereo, 48_000, "WAV", "FLOAT"), field=FIELD)
    assert (decoded.info.sample_rate, decoded.info.channels, decoded.info.subtype) == (48_000, 2, "FLOAT")
    transcript = (await SPEECH.get()).transcribe(decoded.samples)
    sound = f"{decoded.seconds:.1f} s of sound"
    print(f"\n48 kHz stereo: {transcript.text!r} in {transcript.seconds:.2f} s ({sound})")
    assert all(word in transcript.text.split() for word in KEY_WORDS), transcript.text


async def test_ogg_opus_at_48khz_is_decoded_and_transcribed() -> None:
    samples, rate = _speech()
    count = int(len(samples) * 48_000 / rate)
    upsampled = np.interp(np.arange(count) * rate / 48_000, np.arange(len(samples)), samples).astype(
        np.float32
    )
    decoded = decode_audio(soundfile, _encoded(upsampled, 48_000, "OGG", "OPUS"), field=FIELD)
    assert (decoded.info.format, decoded.info.subtype, decoded.info.sample_rate) == ("OGG", "OPUS", 48_000)
    transcript = (await SPEECH.get()).transcribe(decoded.samples)
    assert all(word in transcript.text.split() for word in KEY_WORDS), transcript.text


async def test_the_same_recording_is_heard_the_same_on_a_used_decoder() -> None:
    speech = await SPEECH.get()
    decoded = decode_audio(soundfile, SPEECH_WAV.read_bytes(), field=FIELD)
    assert speech.transcribe(decoded.samples).text == speech.transcribe(decoded.samples).text


async def test_silence_has_no_words() -> None:
    decoded = decode_audio(
        soundfile, _encoded(np.zeros(SAMPLE_RATE * 2, dtype=np.float32), SAMPLE_RATE, "WAV"), field=FIELD
    )
    assert (await SPEECH.get()).transcribe(decoded.samples).text == ""


def test_long_audio_is_cut_at_the_limit() -> None:
    data = _encoded(np.zeros(8000 * 5, dtype=np.float32), 8000, "WAV")
    decoded = decode_audio(soundfile, data, field=FIELD, max_seconds=2.0)
    assert decoded.cut
    assert decoded.seconds == pytest.approx(2.0)
    assert decoded.info.duration == pytest.approx(5.0)


def _tone(frequency: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * frequency * np.arange(int(rate * seconds)) / rate).astype(np.float32)


def _peak(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_a_tone_at_its_frequency(rate: int) -> None:
    out = resample(_tone(1000.0, rate), rate)
    assert len(out) == SAMPLE_RATE
    assert _peak(out, SAMPLE_RATE) == pytest.approx(1000.0, abs=2.0)
    assert 0.6 < float(np.sqrt(np.mean(out**2))) < 0.8  # a sine's RMS, 0.707: kept


def test_resampling_removes_what_16khz_cannot_carry() -> None:
    # 12 kHz at 48 kHz would fold to 4 kHz at 16 kHz without the low-pass filter.
    out = resample(_tone(12_000.0, 48_000), 48_000)
    assert float(np.sqrt(np.mean(out[100:-100] ** 2))) < 0.05


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (os.urandom(4096), "UNREADABLE_AUDIO"),
        (b"RIFF\x24\x08\x00\x00WAVEfmt \x10\x00\x00\x00" + os.urandom(200), "UNREADABLE_AUDIO"),
        (b"fLaC" + os.urandom(500), "UNREADABLE_AUDIO"),
        (b"OggS" + os.urandom(500), "UNREADABLE_AUDIO"),
        (b"\x1a\x45\xdf\xa3" + os.urandom(500), "UNSUPPORTED_AUDIO_FORMAT"),
        (b"", "EMPTY_AUDIO"),
    ],
    ids=["random", "wav-header-garbage", "flac-garbage", "ogg-garbage", "webm", "empty"],
)
def test_unreadable_audio_is_invalid_argument_on_its_field(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        decode_audio(soundfile, data, field="attachments[1].data")
    field, got, description = _violation(exc)
    assert (field, got) == ("attachments[1].data", reason)
    if reason == "UNSUPPORTED_AUDIO_FORMAT":
        assert "WebM" in description and "not supported" in description


def test_a_truncated_flac_is_invalid_argument_or_shorter() -> None:
    samples, rate = _speech()
    data = _encoded(samples, rate, "FLAC")
    try:
        decoded = decode_audio(soundfile, data[: len(data) // 3], field=FIELD)
    except InvalidArgument as exc:
        assert exc.violations[0].field == FIELD
    else:
        assert decoded.seconds < len(samples) / rate


def test_an_impossible_sample_rate_is_invalid_argument() -> None:
    data = bytearray(_encoded(np.zeros(1000, dtype=np.float32), 8000, "WAV", "PCM_16"))
    data[24:28] = (10).to_bytes(4, "little")  # 10 Hz
    with pytest.raises(InvalidArgument) as exc:
        decode_audio(soundfile, bytes(data), field=FIELD)
    assert _violation(exc)[:2] == (FIELD, "BAD_SAMPLE_RATE")


def test_too_many_channels_are_refused() -> None:
    data = _encoded(np.zeros((100, 65), dtype=np.float32), 8000, "WAV", "FLOAT")
    with pytest.raises(InvalidArgument) as exc:
        decode_audio(soundfile, data, field=FIELD)
    assert _violation(exc)[:2] == (FIELD, "UNSUPPORTED_CHANNELS")


def test_a_missing_speech_package_is_unavailable() -> None:
    engine = speech_engine(module="bhiv_no_such_speech_package")
    with pytest.raises(EngineUnavailable, match="bhiv_no_such_speech_package"):
        engine.load()


def test_a_missing_speech_model_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="speech model files are missing"):
        speech_engine(model_dir=tmp_path).load()
