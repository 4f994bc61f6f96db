"""Segmentation on characters and the character → token boundary mapping (REPRO_SPEC §1)."""

from __future__ import annotations

import json
import re

import pytest

from repro_env.errors import ConfigError, ScorerError
from repro_env.segments import (
    char_spans,
    char_to_token_boundaries,
    reasoning_length,
    segment_char_ends,
    split_response,
    split_segments,
    tokenize_with_boundaries,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("a\n\nb", ["a\n\n", "b"]),
        ("a\n\nb\n\n", ["a\n\n", "b\n\n"]),
        ("no delimiter", ["no delimiter"]),
        ("a\n\n\n\nb", ["a\n\n\n\n", "b"]),  # a run stays with the segment before it
        ("a\n\n\nb", ["a\n\n\n", "b"]),  # so does a trailing partial delimiter
        ("\n\na\n\nb", ["\n\na\n\n", "b"]),  # a leading run joins the first segment
        ("\n\n", ["\n\n"]),
        ("x\ny\n\nz", ["x\ny\n\n", "z"]),  # a single newline is not a delimiter
    ],
)
def test_split_segments(text, expected):
    segments = split_segments(text)
    assert segments == expected
    assert "".join(segments) == text


def test_split_segments_custom_delimiter():
    assert split_segments("a. b. c", delimiter=". ") == ["a. ", "b. ", "c"]
    assert split_segments("a||||b", delimiter="||") == ["a||||", "b"]


def test_split_segments_rejects_empty_delimiter():
    with pytest.raises(ConfigError, match="field 'delimiter' must be a non-empty string, got ''"):
        split_segments("abc", delimiter="")


def test_reasoning_ends_before_the_first_segment_that_states_the_final_answer():
    boxed = re.compile(r"\\boxed\{")
    assert reasoning_length(["a\n\n", "b\n\n", "So \\boxed{2}.\n\n", "Done."], boxed) == 2
    assert reasoning_length(["a\n\n", "\\boxed{1} or \\boxed{2}"], boxed) == 1  # the first match counts
    assert reasoning_length(["\\boxed{2}"], boxed) == 0  # the answer at once: no reasoning
    assert reasoning_length(["a\n\n", "b"], boxed) == 2  # no answer stated (truncated): all reasoning
    assert reasoning_length([], boxed) == 0


BOXED = re.compile(r"\\boxed\{")


def split(prompt, response, **kwargs):
    return split_response(prompt, response, final_answer=BOXED, **kwargs)


def test_split_response_without_a_think_block_ends_the_reasoning_before_the_final_answer():
    response = "a\n\nb\n\nSo \\boxed{2}.\n\nDone."
    s = split("Q: ", response)
    assert (s.prefix, s.segments, s.after) == ("Q: ", ("a\n\n", "b\n\n"), ("So \\boxed{2}.\n\n", "Done.\n\n"))
    assert s.spans == ((0, 3), (3, 6)) and s.tail == "So \\boxed{2}.\n\nDone."
    assert not s.think and not s.truncated
    assert "".join(response[i:j] for i, j in s.spans) + s.tail == response  # the spans tile the response
    # no final answer (cut off): all of it is reasoning, the last segment ends like an env step ("b  " -> "b\n\n")
    s = split("Q", "a\n\nb  ")
    assert s.segments == ("a\n\n", "b\n\n") and s.spans == ((0, 3), (3, 6)) and s.tail == "" and s.after == ()
    assert split("Q", "\\boxed{2}").segments == ()  # the answer at once: nothing to score
    assert split("Q", "").segments == () and split("Q", "").tail == ""


def test_split_response_of_a_list_of_segments():
    s = split("Q", ["a", "b\n\n", "\\boxed{2}"])
    assert s.segments == ("a\n\n", "b\n\n") and s.after == ("\\boxed{2}\n\n",) and s.spans == ((0, 3), (3, 6))
    assert s.tail == "\\boxed{2}\n\n" and not s.think


@pytest.mark.parametrize(("prompt", "response", "prefix", "segments", "tail", "truncated"), [
    # R1 style: <think> in the completion; a \\boxed{} draft inside the block is reasoning, scored
    ("Q\n", "<think>\nA \\boxed{1}?\n\nB.\n</think>\n\nSo \\boxed{2}", "Q\n<think>\n",
     ("A \\boxed{1}?\n\n", "B.\n\n"), "</think>\n\nSo \\boxed{2}", False),
    # the chat template opened the block in the prompt (DeepSeek-R1-Distill, Qwen3)
    ("Q\n<think>\n", "A.\n\nB.</think>\\boxed{2}", "Q\n<think>\n", ("A.\n\n", "B.\n\n"), "</think>\\boxed{2}",
     False),
    # ... and no close tag: cut off inside the block, all of it is reasoning
    ("Q\n<think>\n", "A.\n\nB \\boxed{2}", "Q\n<think>\n", ("A.\n\n", "B \\boxed{2}\n\n"), "", True),
    # an empty block
    ("Q", "<think>\n\n</think>\\boxed{2}", "Q<think>\n\n", (), "</think>\\boxed{2}", False),
])
def test_split_response_with_a_think_block(prompt, response, prefix, segments, tail, truncated):
    s = split(prompt, response)
    assert (s.prefix, s.segments, s.tail, s.after) == (prefix, segments, tail, ())
    assert s.think and s.truncated == truncated
    begin = len(s.prefix) - len(prompt)  # the spans tile the response from the reasoning on
    assert response[begin:] == "".join(response[i:j] for i, j in s.spans) + tail


def test_split_response_with_the_tasks_own_tags():
    s = split("Q", "[r]a\n\nb[/r] \\boxed{2}", think_tags=("[r]", "[/r]"))
    assert (s.prefix, s.segments, s.tail) == ("Q[r]", ("a\n\n", "b\n\n"), "[/r] \\boxed{2}")
    assert not split("Q", "[r]a\n\nb[/r] \\boxed{2}").think  # the default tags are <think>, </think>


def test_char_ends_and_spans():
    segments = ["ab\n\n", "cde\n\n", "f"]  # lengths 4, 5, 1
    assert segment_char_ends(segments) == [4, 4 + 5, 4 + 5 + 1]
    assert segment_char_ends(segments, start=3) == [3 + 4, 3 + 9, 3 + 10]
    assert char_spans(segments, start=3) == [(3, 7), (7, 12), (12, 13)]
    assert char_spans([]) == []


def test_char_to_token_boundaries_hand_made():
    # <s> | a | b.\n\n | c      (token 2 starts at char 1 and swallows the delimiter)
    offsets = [(0, 0), (0, 1), (1, 5), (5, 6)]
    assert char_to_token_boundaries(offsets, [0, 1, 3, 5, 6]) == [1, 2, 3, 3, 4]


def test_char_to_token_boundaries_several_tokens_per_char():
    # A 4-byte emoji split into three byte tokens that all start at char 1.
    offsets = [(0, 0), (0, 1), (1, 2), (1, 2), (1, 2), (2, 3)]
    assert char_to_token_boundaries(offsets, [1, 2, 3]) == [2, 5, 6]


def test_char_to_token_boundaries_rejects_unsorted_offsets():
    with pytest.raises(ScorerError, match="token offsets must be non-decreasing"):
        char_to_token_boundaries([(0, 0), (3, 4), (1, 2)], [1])


def test_fixture_tokenizer_reloads_offline_and_merges_delimiters(tiny_llama_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == len(tiny_tokenizer)
    saved = json.loads((tiny_llama_dir / "tokenizer.json").read_text())
    assert saved["model"]["type"] == "BPE"
    assert saved["padding"] is None and saved["truncation"] is None
    ids = tiny_tokenizer("So 3.\n\nThen 4.").input_ids
    assert ids[0] == tiny_tokenizer.bos_token_id
    assert ".\n\n" in [tiny_tokenizer.decode([i]) for i in ids]


def _segment_of_each_token(ids, boundaries):
    return [sum(1 for b in boundaries if b <= i) for i in range(len(ids))]


def test_boundaries_with_merged_delimiter(tiny_tokenizer):
    question = "Question: 3 + 4?"
    segments = ["So, 3 + 4 = 7.\n\n", "Then 7.\n\n", "The answer is 7."]
    ids, boundaries = tokenize_with_boundaries(tiny_tokenizer, question, segments)
    assert len(boundaries) == 1 + 3 and boundaries[-1] == len(ids)
    decoded = [tiny_tokenizer.decode([i]) for i in ids]
    # The delimiter lives inside the ".\n\n" token, which ends segments 1 and 2.
    assert decoded[boundaries[1] - 1] == ".\n\n" and decoded[boundaries[2] - 1] == ".\n\n"
    assert tiny_tokenizer.decode(ids[boundaries[1]:boundaries[2]]) == "Then 7.\n\n"
    assert tiny_tokenizer.decode(ids[boundaries[2]:]) == "The answer is 7."
    assert tiny_tokenizer.decode(ids[1:boundaries[0]]) == question


def test_boundaries_last_segment_without_delimiter_and_consecutive_delimiters(tiny_tokenizer):
    text = "So 1.\n\n\n\nThen 2.\n\nEnd"
    segments = split_segments(text)
    assert segments == ["So 1.\n\n\n\n", "Then 2.\n\n", "End"]
    ids, boundaries = tokenize_with_boundaries(tiny_tokenizer, "Q: ", segments)
    pieces = [tiny_tokenizer.decode(ids[a:b]) for a, b in zip(boundaries, boundaries[1:], strict=False)]
    assert pieces == segments


def test_boundaries_unicode_offsets_are_characters(tiny_tokenizer):
    # é is 2 bytes, 😀 4 bytes, 漢 3 bytes: each becomes several byte tokens of the same character.
    segments = ["café 😀.\n\n", "漢字 = 2.\n\n", "ok"]
    ids, boundaries = tokenize_with_boundaries(tiny_tokenizer, "Q?", segments)
    assert len(ids) > len("Q?" + "".join(segments)) - 10  # many byte tokens, yet:
    pieces = [tiny_tokenizer.decode(ids[a:b]) for a, b in zip(boundaries, boundaries[1:], strict=False)]
    assert pieces == segments
    owners = _segment_of_each_token(ids, boundaries)
    assert owners[0] == 0 and owners[-1] == 3


def test_boundaries_of_empty_reasoning(tiny_tokenizer):
    ids, boundaries = tokenize_with_boundaries(tiny_tokenizer, "Q?", [])
    assert boundaries == [len(ids)]


@pytest.mark.parametrize("which", ["fixture", "bundled"])
def test_extend_tokens_equals_tokenising_the_whole_text(which, tiny_tokenizer, monkeypatch):
    """Seeded random traces, appended piece by piece: the tail re-tokenisation equals the full one at
    every step, including pieces that merge across the old end (punctuation before a line break,
    a word continued, whitespace runs) and words longer than the re-tokenised window."""
    import random

    from transformers import AutoTokenizer

    from repro_env.assets import resolve_model
    from repro_env.segments import RETOKENISED_CHARS, extend_tokens, tokenize_with_offsets

    tokenizer = tiny_tokenizer if which == "fixture" else AutoTokenizer.from_pretrained(resolve_model("bundled"))
    pieces = ["So 3 + 4 = 7.", "\n\n", "\n", " ", "  ", ".", "Wait", "ing", " é", "日本", "12", "345", "?!",
              "\n\n\n", "x" * (RETOKENISED_CHARS + 40), "\\boxed{7}", "\t", "ab.\n\ncd"]
    import repro_env.segments

    full_calls = []
    monkeypatch.setattr(repro_env.segments, "tokenize_with_offsets",
                        lambda tok, t: full_calls.append(t) or tokenize_with_offsets(tok, t))
    rng = random.Random(0)
    incremental = 0
    for _ in range(20):
        text = "Question: what is 3 + 4?\n\n"
        ids, offsets = tokenize_with_offsets(tokenizer, text)
        for _ in range(40):
            new = text + "".join(rng.choice(pieces) for _ in range(rng.randint(1, 4)))
            expected = tokenize_with_offsets(tokenizer, new)
            full_calls.clear()
            got = extend_tokens(tokenizer, text, ids, offsets, new)
            assert got == expected, (text[-40:], new[len(text):])
            incremental += len(text) > RETOKENISED_CHARS and not full_calls
            text, (ids, offsets) = new, got
    print(f"{which}: {incremental} of 800 steps re-tokenised only the tail")
    assert incremental > 400  # most steps took the tail path
