"""Voice names from other catalogues, and the one resolver that maps a requested voice to
the voice an engine speaks with.

A client written for another service names that service's voices: OpenAI's ``alloy``,
Inworld's ``Clive``, SLNG's Orpheus ``tara`` or Kokoro's ``af_bella``. An engine that has
no such voice speaks them with its default voice, unless its ``voice_aliases`` option
(``[speech.engines.NAME] voice_aliases = { tara = "…" }``) names another. Every place that
chooses a voice — the unified TTS ``init``/``configure``, a realtime session's
``audio.output.voice``, a ``response.create``'s voice — goes through
:func:`resolve_voice` (by way of :meth:`TextToSpeech.voice_for
<voxgate.engines.base.TextToSpeech.voice_for>`).

Sources of the names: SLNG's WebSocket docs (docs.slng.ai/websockets,
/api/tts/orpheus-english) for its hosted models; Kokoro-82M's voice files
(huggingface.co/hexgrad/Kokoro-82M); Coqui XTTS-v2's built-in speakers; Inworld's TTS
voices (docs.inworld.ai, and the same list in Vapi's Inworld voice enum); OpenAI's
realtime and speech voices.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

#: Catalogue → its voice names. Each means "the engine's default voice" unless aliased.
CATALOGUES: Mapping[str, tuple[str, ...]] = {
    "openai": (
        "alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage",
        "shimmer", "verse", "marin", "cedar",
    ),
    "inworld": (
        "Alex", "Ashley", "Clive", "Craig", "Deborah", "Dennis", "Dominus", "Edward",
        "Elizabeth", "Hades", "Julia", "Mark", "Olivia", "Pixie", "Priya", "Ronald",
        "Sarah", "Shaun", "Theodore", "Timothy", "Wendy",
        # other languages
        "Yichen", "Xiaoyin", "Xinyi", "Jing", "Erik", "Katrien", "Lennart", "Lore",
        "Alain", "Hélène", "Mathieu", "Étienne", "Johanna", "Josef", "Gianni", "Orietta",
        "Asuka", "Satoshi", "Hyunwoo", "Minji", "Seojun", "Yoona", "Szymon", "Wojciech",
        "Heitor", "Maitê", "Diego", "Lupita", "Miguel", "Rafael",
    ),
    "orpheus": (
        "tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe",
        "luna", "stella", "athena", "hera",
    ),
    "orpheus-indic": ("kanak",),
    "kokoro": (
        "af", "af_heart", "af_alloy", "af_aoede", "af_bella", "af_jessica", "af_kore",
        "af_nicole", "af_nova", "af_river", "af_sarah", "af_sky",
        "am_adam", "am_echo", "am_eric", "am_fenrir", "am_liam", "am_michael", "am_onyx",
        "am_puck", "am_santa",
        "bf_alice", "bf_emma", "bf_isabella", "bf_lily",
        "bm_daniel", "bm_fable", "bm_george", "bm_lewis",
        "jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo",
        "zf_xiaobei", "zf_xiaoni", "zf_xiaoxiao", "zf_xiaoyi",
        "zm_yunjian", "zm_yunxi", "zm_yunxia", "zm_yunyang",
        "ef_dora", "em_alex", "em_santa", "ff_siwis",
        "hf_alpha", "hf_beta", "hm_omega", "hm_psi",
        "if_sara", "im_nicola", "pf_dora", "pm_alex", "pm_santa",
    ),
    "cosyvoice": ("emma",),
    "chatterbox": ("nova", "echo", "sky", "zara", "max"),
    "xtts": (
        "Claribel Dervla", "Daisy Studious", "Gracie Wise", "Tammie Ema", "Alison Dietlinde",
        "Ana Florence", "Annmarie Nele", "Asya Anara", "Brenda Stern", "Gitta Nikolina",
        "Henriette Usha", "Sofia Hellen", "Tammy Grit", "Tanja Adelina", "Vjollca Johnnie",
        "Andrew Chipper", "Badr Odhiambo", "Dionisio Schuyler", "Royston Min", "Viktor Eka",
        "Abrahan Mack", "Adde Michal", "Baldur Sanjin", "Craig Gutsy", "Damien Black",
        "Gilberto Mathias", "Ilkin Urbano", "Kazuhiko Atallah", "Ludvig Milivoj",
        "Suad Qasim", "Torcull Diarmuid", "Viktor Menelaos", "Zacharie Aimilios",
    ),
}  # fmt: skip

_CATALOGUE_NAMES = frozenset(v.casefold() for names in CATALOGUES.values() for v in names)


def is_catalogue_voice(name: str) -> bool:
    """Whether ``name`` is a voice of a catalogue above (case does not matter)."""
    return name.casefold() in _CATALOGUE_NAMES


def resolve_voice(
    requested: str | None,
    *,
    voices: Collection[str],
    default: str,
    aliases: Mapping[str, str],
) -> str:
    """The voice to speak ``requested`` with.

    In order: no voice → ``default``; one of the engine's own ``voices`` → itself; a key of
    ``aliases`` (exact, else ignoring case) → its value; a catalogue voice → ``default``.
    Anything else is returned as it came: the engine decides (a local engine refuses it
    with ``unsupported_voice``, a cloud engine passes it to its provider).
    """
    if not requested:
        return default
    if requested in voices:
        return requested
    target = aliases.get(requested)
    if target is None:
        folded = requested.casefold()
        target = next((v for k, v in aliases.items() if k.casefold() == folded), None)
    if target is not None:
        return target
    return default if is_catalogue_voice(requested) else requested
