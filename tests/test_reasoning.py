"""Reasoning: thinking kwargs and their validation, template support, and the <think> split (batch and streamed)."""
import pytest
from hypothesis import given, settings, strategies as st

from refengine.model import load_model
from refengine.prompt import chat_prompt_ids
from refengine.reasoning import (ReasoningParamError, ReasoningStreamParser, model_supports_thinking,
                                 prompt_opens_thinking, reasoning_template_kwargs, split_reasoning,
                                 template_supports_thinking, text_opens_thinking)
from tool_templates import LLAMA3_TEMPLATE, QWEN_TEMPLATE, R1_TEMPLATE, write_template_model

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def qwen_model(tmp_path_factory):
    return load_model(write_template_model(tmp_path_factory.mktemp("qwen-think"), QWEN_TEMPLATE))


@pytest.fixture(scope="module")
def r1_model(tmp_path_factory):
    return load_model(write_template_model(tmp_path_factory.mktemp("r1-think"), R1_TEMPLATE))


# --- request fields -----------------------------------------------------------------------------------------------

def test_template_kwargs_from_the_request_fields():
    assert reasoning_template_kwargs() == {}
    assert reasoning_template_kwargs(enable_thinking=False) == {"enable_thinking": False}
    assert reasoning_template_kwargs(enable_thinking=True) == {"enable_thinking": True}
    assert reasoning_template_kwargs(reasoning_effort="high") == {"reasoning_effort": "high", "enable_thinking": True}
    assert reasoning_template_kwargs(reasoning_effort="none") == {"reasoning_effort": "none", "enable_thinking": False}
    assert reasoning_template_kwargs(False, "none") == {"reasoning_effort": "none", "enable_thinking": False}
    assert reasoning_template_kwargs(True, "low") == {"reasoning_effort": "low", "enable_thinking": True}


@pytest.mark.parametrize("enable_thinking, effort, param", [
    (False, "high", "reasoning_effort"),
    (False, "minimal", "reasoning_effort"),
    (True, "none", "reasoning_effort"),
    (None, "extreme", "reasoning_effort"),
    ("yes", None, "enable_thinking"),
])
def test_contradicting_or_invalid_fields_name_the_field(enable_thinking, effort, param):
    with pytest.raises(ReasoningParamError) as error:
        reasoning_template_kwargs(enable_thinking, effort)
    assert isinstance(error.value, ValueError) and error.value.param == param
    assert param in str(error.value)


# --- templates ----------------------------------------------------------------------------------------------------

def test_which_templates_think(smollm2, qwen_model, r1_model):
    assert template_supports_thinking(QWEN_TEMPLATE)              # reads enable_thinking
    assert template_supports_thinking(R1_TEMPLATE)                # writes <think>
    assert template_supports_thinking("{{ reasoning_effort }}")
    assert not template_supports_thinking(LLAMA3_TEMPLATE)
    assert not template_supports_thinking(None)
    assert not model_supports_thinking(smollm2)
    assert model_supports_thinking(qwen_model) and model_supports_thinking(r1_model)


def test_enable_thinking_reaches_the_template(qwen_model):
    off = chat_prompt_ids(qwen_model, HI, template_kwargs=reasoning_template_kwargs(enable_thinking=False))
    on = chat_prompt_ids(qwen_model, HI, template_kwargs=reasoning_template_kwargs(enable_thinking=True))
    encode = qwen_model.tokenizer.encode
    assert on == encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert off == encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not prompt_opens_thinking(qwen_model, off) and not prompt_opens_thinking(qwen_model, on)


def test_a_prompt_that_opens_the_thinking_block(r1_model):
    ids = chat_prompt_ids(r1_model, HI, template_kwargs=reasoning_template_kwargs(reasoning_effort="low"))
    assert prompt_opens_thinking(r1_model, ids)
    assert text_opens_thinking("<|assistant|><think>\n") and not text_opens_thinking("<think>x</think>\n")


def test_a_model_without_thinking_accepts_the_fields(smollm2):
    plain = chat_prompt_ids(smollm2, HI)
    for kwargs in ({"enable_thinking": False}, {"reasoning_effort": "high"}, {"enable_thinking": True}):
        assert chat_prompt_ids(smollm2, HI, template_kwargs=reasoning_template_kwargs(**kwargs)) == plain


# --- splitting ----------------------------------------------------------------------------------------------------

# (output, prompt opened <think>, reasoning, content)
SPLITS = [
    ("<think>\nLet me see.\n2+2=4\n</think>\n\nIt is 4.", False, "Let me see.\n2+2=4", "It is 4."),
    ("  <think>short</think>answer\n", False, "short", "answer\n"),
    ("<think>\n\n</think>\n\nNo thinking needed.", False, "", "No thinking needed."),
    ("Just an answer, <think> is only text here.", False, None, "Just an answer, <think> is only text here."),
    ("", False, None, ""),
    ("  <thin", False, None, "  <thin"),
    ("<think>cut off while thinking </thi", False, "cut off while thinking </thi", ""),
    ("reasoning that the prompt opened\n</think>\n\nThe answer </think> stays.", True,
     "reasoning that the prompt opened", "The answer </think> stays."),
    ("\n\nstill thinking\n\n", True, "still thinking", ""),
    ("<think>a\n\n\nb</think>\n \nc", False, "a\n\n\nb", " \nc"),
]


@pytest.mark.parametrize("text, inside, reasoning, content", SPLITS)
def test_split_reasoning(text, inside, reasoning, content):
    assert split_reasoning(text, starts_inside=inside) == (reasoning, content)


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_streamed_split_matches_the_batch_split(data):
    text, inside, reasoning, content = data.draw(st.sampled_from(SPLITS))
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(text)), max_size=10))))
    bounds = [0, *cuts, len(text)]
    parser = ReasoningStreamParser(starts_inside=inside)
    pieces = [parser.push(text[a:b]) for a, b in zip(bounds, bounds[1:])] + [parser.finish()]
    assert "".join(r for r, _ in pieces) == (reasoning or "")
    assert "".join(c for _, c in pieces) == content
    assert parser.saw_thinking == (reasoning is not None)
    # no content delta comes before the last reasoning delta
    last_reasoning = max((i for i, (r, _) in enumerate(pieces) if r), default=0)
    assert not any(c for _, c in pieces[:last_reasoning])


def test_streaming_holds_back_only_undecided_text():
    parser = ReasoningStreamParser()
    assert parser.push(" <th") == ("", "")                 # may still open the block
    assert parser.push("ink>\nStep one") == ("Step one", "")
    assert parser.in_thinking
    assert parser.push(".\n</") == (".", "")                # "\n</" may be the closing tag
    assert parser.push("think>\n\nDone") == ("", "Done")
    assert not parser.in_thinking
    assert parser.push(" </think>") == ("", " </think>")
    assert parser.finish() == ("", "")
