"""The side of a pocketsphinx decoder process: decoders by id, and what one call does.

pocketsphinx's native code holds the Python interpreter while it works (building a
decoder ~0.3 s, an utterance end up to 0.16 s, every frame a few ms). In the server's own
process that stops the event loop — every session waits — and two decoding threads take
turns on one core. So decoders live in worker processes (:mod:`voxgate.engines.sphinx`
sends them work), and this module is what runs there: plain functions on module state,
one call at a time. It imports nothing of voxgate, so a process starts quickly.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from typing import Any

#: Idle decoders, by whether their second pass is on.
_IDLE: dict[bool, list[Any]] = {False: [], True: []}
#: A new decoder's cepstral mean (the features' running mean it normalizes by).
_FRESH_CMN: dict[bool, str] = {}
#: Decoders in an utterance, by id, with their second-pass setting.
_ACTIVE: dict[int, tuple[Any, bool]] = {}
_IDS = itertools.count(1)


def init(nice: int) -> None:
    """Process initializer: the engine threads' nice value (a lower scheduling priority
    than the server's event loop). Set, not added: the process is started from an
    engine thread and inherits its value (``os.nice`` added to it: 10 + 10, capped at 19)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def _decoder(second_pass: bool) -> Any:
    idle = _IDLE[second_pass]
    if idle:
        return idle.pop()
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=16000, loglevel="FATAL", fwdflat=second_pass)
    _FRESH_CMN.setdefault(second_pass, decoder.get_cmn())
    return decoder


def warm(second_pass: bool) -> None:
    """Have one idle decoder ready (and prove the model loads)."""
    if not _IDLE[second_pass]:
        _IDLE[second_pass].append(_decoder(second_pass))


def begin(second_pass: bool, cmn: str | None) -> int:
    """Borrow a decoder and start an utterance on it; returns its id.

    A decoder adapts to what it heard (its cepstral mean, its noise estimate); borrowed
    by another stream, it must not carry that over. So it starts afresh, with ``cmn``:
    the mean the stream's previous utterance ended with (``None`` for a new stream)."""
    decoder = _decoder(second_pass)
    decoder.start_stream()
    decoder.set_cmn(cmn if cmn is not None else _FRESH_CMN[second_pass])
    decoder.start_utt()
    key = next(_IDS)
    _ACTIVE[key] = (decoder, second_pass)
    return key


def restart(key: int) -> None:
    """Drop the utterance in progress and start another on the same decoder."""
    decoder, _ = _ACTIVE[key]
    decoder.end_utt()
    decoder.start_utt()


def process(key: int, pcm: bytes) -> str | None:
    """Decode more of the utterance; the partial hypothesis, or ``None``."""
    decoder, _ = _ACTIVE[key]
    decoder.process_raw(pcm, False, False)
    hyp = decoder.hyp()
    return hyp.hypstr if hyp is not None and hyp.hypstr else None


def end(key: int) -> tuple[str, float, str]:
    """End the utterance: its text, posterior probability and the cepstral mean the
    stream goes on with; the decoder is idle again."""
    decoder, second_pass = _ACTIVE.pop(key)
    try:
        decoder.end_utt()
        hyp = decoder.hyp()
        cmn = decoder.get_cmn()
        if hyp is None or not hyp.hypstr:
            return "", 0.0, cmn
        return hyp.hypstr, min(1.0, max(0.0, float(hyp.prob))), cmn
    finally:
        _IDLE[second_pass].append(decoder)


def release(key: int) -> None:
    """Give a decoder back without a result (its stream closed mid-utterance)."""
    entry = _ACTIVE.pop(key, None)
    if entry is not None:
        decoder, second_pass = entry
        decoder.end_utt()
        _IDLE[second_pass].append(decoder)
