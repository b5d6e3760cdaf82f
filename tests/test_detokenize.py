"""Incremental detokenizing and stop strings."""
from hypothesis import given, settings
from hypothesis import strategies as st

from refengine.detokenize import IncrementalDetokenizer, StopChecker

EMOJI = "😀".encode()                                  # f0 9f 98 80
TOKENS = [b"H", b"i", b" ", "é".encode()[:1], "é".encode()[1:], EMOJI[:1], EMOJI[1:2], EMOJI[2:3],
          EMOJI[3:], b"\xff", "né".encode(), "日本".encode()]
H, I, SPACE, E1, E2, F0, N9F, N98, N80, BAD, NE, JA = range(len(TOKENS))


def pushes(ids):
    detokenizer = IncrementalDetokenizer(TOKENS)
    return [detokenizer.push(i) for i in ids], detokenizer.flush()


def test_ascii_and_whole_characters_come_out_at_once():
    assert pushes([H, I, SPACE, NE, JA]) == (["H", "i", " ", "né", "日本"], "")


def test_two_byte_character_split_over_tokens():
    assert pushes([H, E1, E2, I]) == (["H", "", "é", "i"], "")


def test_emoji_split_over_four_byte_tokens():
    assert pushes([F0, N9F, N98, N80, H]) == (["", "", "", "😀", "H"], "")


def test_flush_replaces_an_unfinished_character():
    assert pushes([H, F0, N9F]) == (["H", "", ""], "\ufffd")


def test_invalid_byte_is_replaced_without_waiting():
    assert pushes([H, BAD, I]) == (["H", "\ufffd", "i"], "")


def test_an_interrupted_character_is_replaced_and_the_next_one_kept():
    pieces, tail = pushes([E1, H, F0, N9F, E1, E2])
    assert "".join(pieces) + tail == "\ufffdH\ufffdé"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=4), max_size=12))
def test_pieces_concatenate_to_the_one_shot_decode(token_bytes):
    detokenizer = IncrementalDetokenizer(token_bytes)
    pieces = [detokenizer.push(i) for i in range(len(token_bytes))]
    assert "".join(pieces) + detokenizer.flush() == b"".join(token_bytes).decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------


def stream(chunks, stops):
    checker = StopChecker(stops)
    released, stopped = [], False
    for chunk in chunks:
        text, stopped = checker.push(chunk)
        released.append(text)
        if stopped:
            break
    tail = checker.flush()
    return released, tail, stopped


def test_stop_string_split_across_pushes():
    released, tail, stopped = stream(["abc</", "en", "d>tail", "more"], ["</end>"])
    assert released == ["abc", "", ""] and tail == "" and stopped


def test_stop_string_at_the_very_start():
    assert stream(["STOP and more"], ["STOP"]) == ([""], "", True)
    assert stream(["S", "TOP", "x"], ["STOP"]) == (["", ""], "", True)


def test_holds_back_only_a_possible_start_of_a_stop_string():
    checker = StopChecker(["</end>"])
    assert checker.push("abc<") == ("abc", False)
    assert checker.push("/e") == ("", False)               # "</e" could still become "</end>"
    assert checker.push("x") == ("</ex", False)            # ... and now cannot
    assert checker.push("</en") == ("", False)
    assert checker.flush() == "</en"                       # the end: what was held is released


def test_multiple_stop_strings_the_first_completed_wins():
    assert stream(["one\n\ntwo END"], ["END", "\n\n"]) == (["one"], "", True)
    assert stream(["a", "b"], ["abc", "b"]) == (["", "a"], "", True)
    # "b" completes before "abcd" could, whether or not the text comes in one piece
    assert stream(["abcd"], ["abcd", "b"]) == (["a"], "", True)


def test_after_a_stop_nothing_more_is_released():
    checker = StopChecker(["x"])
    assert checker.push("ax") == ("a", True)
    assert checker.push("bbb") == ("", True)
    assert checker.flush() == ""


def test_no_stop_strings_releases_everything_at_once():
    assert stream(["ab", "c"], []) == (["ab", "c"], "", False)
    assert stream(["ab", "c"], [""]) == (["ab", "c"], "", False)


def test_undetected_text_is_released_and_only_later_completions_stop():
    checker = StopChecker(["STOP"])
    assert checker.push("a STOP b ST", detect=False) == ("a STOP b ", False)
    assert checker.push("OP c") == ("", True)             # completed after detection began


def first_stop_reference(text, stops):
    """Text before the first stop string to complete (on a tie, the longest), and whether one did."""
    for end in range(len(text) + 1):
        ending = [s for s in stops if s and text[:end].endswith(s)]
        if ending:
            return text[:end - max(map(len, ending))], True
    return text, False


@settings(max_examples=400, deadline=None)
@given(text=st.text(alphabet="ab\nc", max_size=30),
       stops=st.lists(st.text(alphabet="ab\nc", min_size=1, max_size=4), max_size=3),
       cuts=st.lists(st.integers(0, 30), max_size=8))
def test_streamed_pieces_concatenate_to_the_non_streamed_text(text, stops, cuts):
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    released, tail, stopped = stream(chunks, stops)
    assert ("".join(released) + tail, stopped) == first_stop_reference(text, stops)
