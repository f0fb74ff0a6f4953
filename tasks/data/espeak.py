"""Speech from text with eSpeak NG, driven through ctypes.

The `espeakng-loader` wheel ships `libespeak-ng` and its voice data; nothing is downloaded. eSpeak NG is
GPL-3.0: it is loaded as a shared library at run time, and this suite neither copies nor links it.
"""
from __future__ import annotations

import ctypes
from functools import cache

import numpy as np

SAMPLE_RATE = 22050  # what espeak_Initialize reports for every voice

# from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_PARAMETER = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _ESpeak:
    """The library is one global synthesiser per process: one instance, made on first use."""

    def __init__(self):
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if rate != SAMPLE_RATE:
            raise RuntimeError(f"espeak_Initialize failed or reports {rate} Hz (expected {SAMPLE_RATE})")
        self.lib, self.chunks = lib, []
        self.callback = _CALLBACK(self._collect)  # kept alive here: the library holds only a pointer
        lib.espeak_SetSynthCallback(self.callback)

    def _collect(self, samples, count, _events) -> int:
        if count > 0:
            self.chunks.append(np.ctypeslib.as_array(samples, (count,)).copy())
        return 0  # 0: go on synthesising

    def synth(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r} (e.g. en-us, en-gb-x-rp, en-us+f3)")
        for name, value in (("rate", rate), ("pitch", pitch)):
            if self.lib.espeak_SetParameter(_PARAMETER[name], int(value), 0) != 0:
                raise ValueError(f"eSpeak NG rejected {name}={value}")
        data = text.encode()
        self.chunks = []
        if self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
            raise RuntimeError(f"espeak_Synth failed on {text[:60]!r}")
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


@cache
def _engine() -> _ESpeak:
    return _ESpeak()


def synthesize(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> np.ndarray:
    """16-bit mono samples at 22.05 kHz: `voice` an eSpeak NG voice with an optional variant (`en-us+f3`),
    `rate` in words per minute (80–450), `pitch` 0–99 (50 normal)."""
    return _engine().synth(text, voice, rate, pitch)
