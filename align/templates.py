"""What a chat template refuses, and the conversation reshaped so it accepts it.

The app (llama.cpp's formatter), the nightly training (the tokenizer's template) and the
gate render the same conversations: all three reshape them by the same rules, found by
trying the template, so a model trains on the prompts it is sent.
"""
from dataclasses import dataclass
from typing import Callable


class TemplateRefused(ValueError):
    """The template cannot format even a one-message conversation."""


@dataclass(frozen=True)
class TemplateRules:
    """Gemma's templates raise on a system role, Mistral's unless user and assistant
    alternate (two user turns follow each other when a reply was stopped before any
    text): the conversation is reshaped instead of failing every message."""
    fold_system: bool = False     # the system prompt goes at the top of the first user turn
    merge_turns: bool = False     # consecutive turns of one role become one

    def apply(self, messages: list[dict]) -> list[dict]:
        out = [dict(m) for m in messages]
        if self.fold_system and out and out[0]["role"] == "system":
            system = out.pop(0)["content"]
            if out and out[0]["role"] == "user" and system:
                out[0]["content"] = f"{system}\n\n{out[0]['content']}"
        if self.merge_turns:
            merged: list[dict] = []
            for message in out:
                if merged and merged[-1]["role"] == message["role"]:
                    merged[-1]["content"] += "\n\n" + message["content"]
                else:
                    merged.append(message)
            out = merged
        return out


def template_rules(render: Callable[[list[dict]], object]) -> TemplateRules:
    """The rules of the template behind ``render(messages)`` (which raises on what the
    template refuses), found by trying it on small conversations."""
    def renders(messages) -> bool:
        try:
            render(messages)
            return True
        except Exception:  # noqa: BLE001 - a template raises whatever its author chose
            return False
    system, user, other = ({"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                           {"role": "user", "content": "v"})
    rules = TemplateRules(fold_system=not renders([system, user]),
                          merge_turns=not renders([user, other]))
    if not renders(rules.apply([system, user])):
        raise TemplateRefused("its chat template cannot format even a one-message conversation")
    return rules
