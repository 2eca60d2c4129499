"""The chat template, a chat tokenizer, and supervised fine-tuning (SFT) examples and loss.

A chat model reads a conversation as one token sequence. The template writes each message as its role's
marker, the content and the end-of-turn marker, with no separator between messages:

    <|system|>Be brief.<|end|><|user|>What is 3+4?<|end|><|assistant|>7<|end|>

and a *generation prompt* is the assistant's marker alone, appended so the model answers next. The markers
are special tokens: one id each, never produced by encoding text, so a message cannot forge a turn (content
that contains a marker is refused). The end-of-turn token is how the model learns to stop: generation ends
when it samples <|end|>.

SFT trains on such sequences with the next-token loss counted on the response only,

    L = -(1/|R|) sum_{t in R} log p(y_t | y_<t, prompt),

where R is the set of the assistant's tokens: its content and its <|end|>, not the user turn nor the
<|assistant|> marker (those are given, not generated). Over a batch, R is every response token of every
sequence (the token-level mean, as `lm_loss` and TRL compute it). `sft_example` builds the inputs and the
targets, -100 (IGNORE_INDEX) where the target is a prompt token; `collate_sft` pads a batch.

`to_hf` exports the tokenizer to Hugging Face with a Jinja chat template that renders exactly as
`ChatTemplate.render` does and wraps each assistant reply in {% generation %}, so
``apply_chat_template(..., return_assistant_tokens_mask=True)`` marks the same tokens as our loss mask.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from companion.posttraining.tasks import Task
from companion.text.tokenization import CharTokenizer
from companion.training.objectives import IGNORE_INDEX, lm_loss

__all__ = [
    "ChatTemplate",
    "ChatTokenizer",
    "as_messages",
    "collate_sft",
    "sft_example",
    "sft_loss",
    "to_hf",
]

Message = Mapping[str, str]


@dataclass(frozen=True)
class ChatTemplate:
    """Role markers and the end-of-turn marker; `system=""` means the template has no system role."""

    user: str = "<|user|>"
    assistant: str = "<|assistant|>"
    end: str = "<|end|>"
    system: str = "<|system|>"

    def __post_init__(self) -> None:
        if not self.end:
            raise ValueError(
                "the chat template has no end-of-turn token (end is empty): the model could never learn "
                "where its answer stops"
            )
        if not self.user or not self.assistant:
            raise ValueError("the chat template needs a user marker and an assistant marker")
        markers = self.markers
        if any(len(m) < 2 for m in markers):
            raise ValueError(f"markers are special tokens of two or more characters, got {list(markers)}")
        for a in markers:
            for b in markers:
                if a is not b and a in b:
                    raise ValueError(f"marker {a!r} occurs inside marker {b!r}: the markers must be distinct")

    @property
    def markers(self) -> tuple[str, ...]:
        """The special tokens in id order: user, assistant, end, then system if there is one."""
        return (self.user, self.assistant, self.end) + ((self.system,) if self.system else ())

    @property
    def roles(self) -> dict[str, str]:
        """Role name -> its marker."""
        roles = {"user": self.user, "assistant": self.assistant}
        return roles | ({"system": self.system} if self.system else {})

    def check(self, messages: Sequence[Message]) -> None:
        """Raise ValueError for an empty conversation, an unknown role, or content holding a marker."""
        if isinstance(messages, Mapping | str) or len(messages) == 0:
            raise ValueError("a conversation is a non-empty list of {'role': ..., 'content': ...} messages")
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or not isinstance(m.get("content"), str):
                raise TypeError(f"message {i} is not a mapping with a str 'content': {m!r}")
            if m.get("role") not in self.roles:
                raise ValueError(f"message {i} has the unknown role {m.get('role')!r}; known: {list(self.roles)}")
            found = [marker for marker in self.markers if marker in m["content"]]
            if found:
                raise ValueError(
                    f"message {i} ({m['role']}) contains the marker {min(found, key=m['content'].index)!r}: "
                    "content may not hold the template's special tokens (it could forge a turn)"
                )

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        """The conversation as one string: marker + content + end per message, then the assistant's marker."""
        self.check(messages)
        text = "".join(self.roles[m["role"]] + m["content"] + self.end for m in messages)
        return text + (self.assistant if add_generation_prompt else "")

    def jinja(self) -> str:
        """The same layout as a Jinja chat template for Hugging Face (assistant replies in {% generation %})."""

        def say(text: str) -> str:  # a marker as a Jinja string literal, quotes and backslashes escaped
            return "{{ " + json.dumps(text) + " }}"

        parts = [
            "{%- for message in messages -%}",
            "{%- for marker in [" + ", ".join(json.dumps(m) for m in self.markers) + "] -%}",
            "{%- if marker in message['content'] -%}",
            "{{ raise_exception('message content contains the marker ' + marker) }}",
            "{%- endif -%}{%- endfor -%}",
        ]
        for i, (role, marker) in enumerate(self.roles.items()):
            body = "{{ message['content'] }}" + say(self.end)
            if role == "assistant":  # the tokens the SFT loss counts
                body = "{% generation %}" + body + "{% endgeneration %}"
            parts.append("{%- " + ("if" if i == 0 else "elif") + " message['role'] == " + json.dumps(role) + " -%}")
            parts.append(say(marker) + body)
        parts += [
            "{%- else -%}{{ raise_exception('unknown role ' + message['role']) }}{%- endif -%}",
            "{%- endfor -%}",
            "{%- if add_generation_prompt -%}" + say(self.assistant) + "{%- endif -%}",
        ]
        return "".join(parts)


def as_messages(task: Task) -> list[dict[str, str]]:
    """A task as a two-turn conversation: the user's prompt, the assistant's canonical answer."""
    return [{"role": "user", "content": task.prompt}, {"role": "assistant", "content": task.answer}]


class ChatTokenizer:
    """A CharTokenizer whose specials are the template's markers: markers -> one id each, content -> characters."""

    def __init__(self, chars: CharTokenizer, template: ChatTemplate | None = None):
        template = template or ChatTemplate()
        if chars.specials != template.markers:
            raise ValueError(
                f"the CharTokenizer's specials {list(chars.specials)} are not the template's markers "
                f"{list(template.markers)}: build it with ChatTokenizer.from_alphabet"
            )
        self.chars = chars
        self.template = template
        self.role_ids = {role: chars.stoi[m] for role, m in template.roles.items()}
        self.end_id = chars.stoi[template.end]

    @classmethod
    def from_alphabet(cls, alphabet: str | Iterable[str], template: ChatTemplate | None = None) -> ChatTokenizer:
        """Markers take the first ids, then the alphabet's characters in sorted order."""
        template = template or ChatTemplate()
        return cls(CharTokenizer(alphabet, specials=template.markers), template)

    @property
    def vocab_size(self) -> int:
        """Number of ids: the markers and the characters."""
        return self.chars.vocab_size

    def encode(self, text: str) -> list[int]:
        """Plain text -> character ids (never a marker id)."""
        return self.chars.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text, marker ids written as their markers (so decode(encode_chat(m)) == render(m))."""
        return self.chars.decode(ids)

    def decode_reply(self, ids: Iterable[int]) -> str:
        """A generated reply: the text of the ids before the first end-of-turn id."""
        reply = []
        for i in ids:
            if int(i) == self.end_id:
                break
            reply.append(int(i))
        return self.decode(reply)

    def encode_turns(
        self, messages: Sequence[Message], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[bool]]:
        """Ids of the conversation and, per id, whether the assistant produced it (its content and its end)."""
        self.template.check(messages)
        ids: list[int] = []
        produced: list[bool] = []
        for m in messages:
            body = self.encode(m["content"]) + [self.end_id]
            ids += [self.role_ids[m["role"]]] + body
            produced += [False] + [m["role"] == "assistant"] * len(body)
        if add_generation_prompt:
            ids.append(self.role_ids["assistant"])
            produced.append(False)
        return ids, produced

    def encode_chat(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> list[int]:
        """The conversation's ids: each marker its special id, each content character its id."""
        return self.encode_turns(messages, add_generation_prompt)[0]

    def encode_prompt(self, prompt: str) -> list[int]:
        """Ids of one user turn followed by the assistant's marker, ready for generation."""
        return self.encode_chat([{"role": "user", "content": prompt}], add_generation_prompt=True)

    def __repr__(self) -> str:
        return f"ChatTokenizer(vocab_size={self.vocab_size}, markers={list(self.template.markers)})"


# ----------------------------------------------------------------------------- SFT examples, batches, loss


def sft_example(
    tokenizer: ChatTokenizer, task_or_messages: Task | Sequence[Message], mask_prompt: bool = True
) -> tuple[list[int], list[int]]:
    """(input_ids, targets) of one conversation: targets are the next ids, -100 where they are prompt tokens.

    With mask_prompt the loss counts only the assistant's content and its <|end|>; without it, every position.
    """
    messages = as_messages(task_or_messages) if isinstance(task_or_messages, Task) else task_or_messages
    ids, produced = tokenizer.encode_turns(messages)
    if mask_prompt and not any(produced):
        raise ValueError("the conversation has no assistant turn: with mask_prompt=True nothing would be learned")
    inputs = ids[:-1]  # position t reads ids[: t + 1] and predicts ids[t + 1]
    targets = [y if (p or not mask_prompt) else IGNORE_INDEX for y, p in zip(ids[1:], produced[1:])]
    return inputs, targets


def collate_sft(
    examples: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, block_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Right-pad (input_ids, targets) pairs to the longest -> x (B, T), y (B, T); y is padded with -100.

    Right padding changes nothing for a causal model: pad positions come after the real ones and carry
    no target. A sequence longer than `block_size` raises instead of being cut.
    """
    if len(examples) == 0:
        raise ValueError("collate_sft got no examples")
    if not isinstance(pad_id, int) or pad_id < 0:
        raise ValueError(f"pad_id must be a non-negative token id, got {pad_id!r}")
    for i, (x, y) in enumerate(examples):
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"example {i} has {len(x)} inputs and {len(y)} targets: they must match, and not be 0")
        if block_size is not None and len(x) > block_size:
            raise ValueError(f"sequence length {len(x)} exceeds block_size {block_size} (example {i})")
    width = max(len(x) for x, _ in examples)
    xb = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    yb = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for i, (x, y) in enumerate(examples):
        xb[i, : len(x)] = torch.as_tensor(x, dtype=torch.long)
        yb[i, : len(y)] = torch.as_tensor(y, dtype=torch.long)
    return xb, yb


def sft_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over the response tokens (targets != -100) of (B, T, V) logits and (B, T) targets."""
    if logits.dim() != targets.dim() + 1 or logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree: "
            "logits must be the targets' shape plus a vocabulary axis"
        )
    return lm_loss(logits, targets)


# ----------------------------------------------------------------------------- Hugging Face export


def to_hf(tokenizer: ChatTokenizer):
    """The chat tokenizer as a `transformers.PreTrainedTokenizerFast` with the same ids and chat template.

    A WordLevel model over single characters (a pre-tokenizer isolates every character), the markers as
    special tokens at their ids, <|end|> as end-of-sequence and padding token, and `chat_template` set so
    that ``apply_chat_template`` renders and encodes as `ChatTemplate.render` and `encode_chat` do.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=dict(tokenizer.chars.stoi)))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
    tok.decoder = decoders.Fuse()  # join the characters back without spaces
    tok.add_special_tokens([AddedToken(m, special=True, normalized=False) for m in tokenizer.template.markers])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=tokenizer.template.end,
        pad_token=tokenizer.template.end,
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = tokenizer.template.jinja()
    return hf
