"""Chat templates render as transformers renders them, and refuse bad input with a clear error."""
import pytest

from refengine.template import ChatTemplate, ChatTemplateError

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}


def test_default_model_template_renders_chatml(smollm2):
    text = smollm2.template.render([{"role": "user", "content": "Hi"}])
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    no_prompt = smollm2.template.render([{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}],
                                        add_generation_prompt=False)
    assert no_prompt == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


def test_trim_blocks_lstrip_blocks_and_special_tokens():
    source = ("{{ bos_token }}\n    {% for m in messages %}\n    [{{ m.role }}] {{ m.content }}\n"
              "    {% endfor %}\n{% if add_generation_prompt %}[assistant]{% endif %}")
    rendered = ChatTemplate(source, SPECIAL).render([{"role": "user", "content": "a"},
                                                      {"role": "assistant", "content": "b"}])
    assert rendered == "<s>\n    [user] a\n    [assistant] b\n[assistant]"


def test_list_content_parts_are_joined():
    template = ChatTemplate("{% for m in messages %}{{ m.content }}|{% endfor %}", SPECIAL)
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    assert template.render([{"role": "user", "content": parts}]) == "first\nsecond|"


def test_tojson_keeps_unicode_and_takes_indent():
    template = ChatTemplate("{{ tools | tojson }}/{{ tools | tojson(indent=2) }}", SPECIAL)
    tools = [{"name": "café"}]
    assert template.render([], tools=tools) == '[{"name": "café"}]/[\n  {\n    "name": "café"\n  }\n]'


def test_extra_kwargs_and_loop_controls_reach_the_template():
    source = ("{% for m in messages %}{% if m.role == 'skip' %}{% continue %}{% endif %}{{ m.content }}"
              "{% endfor %}{% if enable_thinking is defined and not enable_thinking %}/no_think{% endif %}")
    template = ChatTemplate(source, SPECIAL)
    messages = [{"role": "user", "content": "a"}, {"role": "skip", "content": "b"}]
    assert template.render(messages, enable_thinking=False) == "a/no_think"
    assert template.render(messages) == "a"


def test_raise_exception_and_render_failures_become_chat_template_errors():
    strict = ChatTemplate("{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start "
                          "with a user message') }}{% endif %}ok", SPECIAL)
    assert strict.render([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(ChatTemplateError, match="must start with a user message"):
        strict.render([{"role": "assistant", "content": "x"}])
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{{ messages[0].content + 1 }}", SPECIAL).render([{"role": "user", "content": "x"}])


def test_the_sandbox_blocks_attribute_escapes():
    template = ChatTemplate("{{ messages.__class__.__mro__ }}", SPECIAL)
    with pytest.raises(ChatTemplateError):
        template.render([{"role": "user", "content": "x"}])
