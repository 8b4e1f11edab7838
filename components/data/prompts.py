"""Rendering of task prompts with a model's own chat template."""
from __future__ import annotations


def render_prompt(tokenizer, prompt: str, system_prompt: str | None = None) -> str:
    """The chat-templated text a policy continues from (generation prompt included)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
