"""How a conversation becomes token ids for a captioner's LM, the same way in training and in use.

    [bos] USER: {text before <image>} <image> {text after}\\nASSISTANT: {answer}<eos>\\nUSER: ... ASSISTANT:

Each piece is tokenised on its own (no merge across a boundary, so a prompt's ids are a prefix of
the training ids); `<image>` is not a token here but a position (`image_at`) where the visual
prefix is spliced in. Training labels are the assistant's answers and their `<eos>` only.
"""

from __future__ import annotations

from dataclasses import dataclass

from visembed.models.lm import IMAGE_TOKEN, special_ids

IGNORE = -100  # label of a position that is not learnt


class ConversationError(ValueError):
    """A conversation that cannot be used (malformed, or nothing left to learn after truncation)."""


@dataclass
class Encoded:
    ids: list[int]
    labels: list[int]  # IGNORE where nothing is learnt
    image_at: int  # the visual prefix goes before ids[image_at]


def _pieces(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def check_conversation(turns: list[dict]) -> None:
    """Alternating user/assistant turns, starting with the user; IMAGE_TOKEN once, in the first turn."""
    if not turns:
        raise ConversationError("a conversation needs at least one user turn")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or set(turn) - {"role", "content"} or not isinstance(turn.get("content"), str):
            raise ConversationError(f"turn {i + 1} must be {{'role': ..., 'content': str}}, got {turn!r:.80}")
        expected = "user" if i % 2 == 0 else "assistant"
        if turn.get("role") != expected:
            raise ConversationError(f"turn {i + 1} must have role {expected!r} (turns alternate, user first), "
                                    f"got {turn.get('role')!r}")
    images = sum(t["content"].count(IMAGE_TOKEN) for t in turns)
    if images != 1 or IMAGE_TOKEN not in turns[0]["content"]:
        raise ConversationError(f"the first user turn must hold {IMAGE_TOKEN} exactly once (found {images} in all)")


def encode(tokenizer, turns: list[dict], max_tokens: int, *, prompt: bool = False) -> Encoded:
    """Ids and labels of `turns`; with `prompt=True` the last turn is the user's and the ids end
    with "ASSISTANT:" for the model to continue. Truncated to `max_tokens` at the end."""
    check_conversation(turns)
    bos, eos, _ = special_ids(tokenizer)
    ids: list[int] = [] if bos is None else [bos]
    labels: list[int] = [IGNORE] * len(ids)
    image_at = -1

    def add(piece: list[int], learnt: bool) -> None:
        ids.extend(piece)
        labels.extend(piece if learnt else [IGNORE] * len(piece))

    for i, turn in enumerate(turns):
        if turn["role"] == "user":
            before, _, after = turn["content"].partition(IMAGE_TOKEN) if i == 0 else (turn["content"], "", "")
            add(_pieces(tokenizer, ("\n" if i else "") + "USER: " + before.strip()), False)
            if i == 0:
                image_at = len(ids)
                add(_pieces(tokenizer, after.rstrip()), False)
            add(_pieces(tokenizer, "\nASSISTANT:"), False)
        else:
            add(_pieces(tokenizer, " " + turn["content"].strip()) + [eos], True)
    if prompt and turns[-1]["role"] != "user":
        raise ConversationError("a prompt ends with the user's turn")
    if image_at > max_tokens:
        raise ConversationError(f"the image comes after token {max_tokens} (the context limit): shorten the first turn")
    return Encoded(ids[:max_tokens], labels[:max_tokens], image_at)


def fit_dialogue(tokenizer, turns: list[dict], max_tokens: int) -> tuple[list[dict], int, bool]:
    """Drop the oldest exchanges until the prompt fits `max_tokens`; the image stays with the first
    remaining user turn. A last question longer than the context on its own keeps its beginning:
    cutting the encoded prompt instead would cut off the `ASSISTANT:` cue the reply follows.
    Returns (turns, number of turns dropped, whether the question was cut)."""

    def fits(candidate: list[dict]) -> bool:
        return len(encode(tokenizer, candidate, 10**9, prompt=True).ids) <= max_tokens

    dropped = 0
    while not fits(turns):
        if len(turns) <= 1:
            content = turns[0]["content"]
            low, high = len(IMAGE_TOKEN) + 1, len(content)  # the longest beginning that fits
            while low < high:
                middle = (low + high + 1) // 2
                low, high = (middle, high) if fits([{"role": "user", "content": content[:middle]}]) else (low, middle - 1)
            return [{"role": "user", "content": content[:low].rstrip()}], dropped, True
        rest = turns[2:]
        rest[0] = {"role": "user", "content": IMAGE_TOKEN + "\n" + rest[0]["content"].replace(IMAGE_TOKEN, "").strip()}
        turns, dropped = rest, dropped + 2
    return turns, dropped, False


def encode_with_hints(tokenizer, turns: list[dict], hints: list[str], max_tokens: int, *,
                      prompt: bool = False) -> Encoded:
    """`encode` of `turns` with as many of `hints` (most similar first) as fit in `max_tokens` beside
    the whole conversation: hints never push an answer out of the context."""
    from visembed.data.conversations import with_hints

    for n in range(len(hints), 0, -1):
        row = encode(tokenizer, with_hints(turns, hints[:n]), 10**9, prompt=prompt)
        if len(row.ids) <= max_tokens:
            return row
    return encode(tokenizer, turns, max_tokens, prompt=prompt)
