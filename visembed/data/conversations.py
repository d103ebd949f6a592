"""Conversations about an image: what the captioner is trained on, from every data source.

A turn is `{"role": "user" | "assistant", "content": str}`; a conversation is a list of turns that
alternate user/assistant, start with the user and end with the assistant. The first user turn
starts with IMAGE_TOKEN and a newline (where the visual prefix goes); no other turn has it.

`conversations_of(sample)` lists every candidate conversation of one Sample, in a fixed order
(it runs in loader threads; the training task picks one with its own seeded RNG):
  - LLaVA JSON (`meta["conversations"]`, see `llava.py`): that conversation, alone;
  - builtin:emoji: bilingual questions about what the data knows (name, group, subgroup), an
    alt-text request and a detail request, and two short multi-turn dialogues;
  - any other source: the alt-text request answered by each caption the sample has.
`alt_text_of(sample, language)` is the reference an evaluated caption is compared with: for emoji
the same sentence the alt-text request is trained on.

Hints (SmallCap's retrieval augmentation): `with_hints(turns, texts)` puts the training captions
closest to the image (found by the captioner in its dual-encoder space; `hint_texts_of` gives a
sample's own, which make the bank) on a line after the image, in the conversation's language:
    <image>
    Similar: man juggling; woman golfing; person juggling.
    Describe the image in one short sentence.
The LM learns to reuse and recombine them, which retrieval alone cannot do for a concept it never saw.

Alt text follows common practice (WCAG alt decision tree): one short sentence, at most
ALT_TEXT_MAX characters, never "image of".
"""

from __future__ import annotations

import re

from .sample import Sample

IMAGE_TOKEN = "<image>"
ROLES = ("user", "assistant")
ALT_TEXT_MAX = 125  # characters: the usual ceiling for alt text

_PROMPTS = {  # (language, detail) -> the user's request
    ("en", False): "Describe the image in one short sentence.",
    ("zh", False): "用一句话描述这张图片。",
    ("en", True): "Describe the image in detail.",
    ("zh", True): "详细描述这张图片。",
}
LANGUAGES = ("en", "zh")

QUESTIONS = {
    "en": {"name": "What is this?", "group": "Which emoji group is this in?",
           "subgroup": "Which emoji subgroup is this in?"},
    "zh": {"name": "这是什么？", "group": "这个表情符号属于哪个类别？"},  # no Chinese subgroup names
}
# The ten Unicode emoji groups (emoji_groups.txt) in Chinese, as CLDR's Chinese emoji pickers name them.
GROUPS_ZH = {
    "Smileys & Emotion": "笑脸和情感",
    "People & Body": "人物和身体",
    "Component": "组件",
    "Animals & Nature": "动物和自然",
    "Food & Drink": "食物和饮料",
    "Travel & Places": "旅行和地点",
    "Activities": "活动",
    "Objects": "物品",
    "Symbols": "符号",
    "Flags": "旗帜",
}
_HINT_LINES = {"en": ("Similar: ", "; ", "."), "zh": ("相似：", "；", "。")}  # (label, separator, end)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def caption_prompt(language: str = "en", detail: bool = False) -> str:
    """The user's request for alt text (or, with `detail`, a longer description), without IMAGE_TOKEN."""
    try:
        return _PROMPTS[(language, bool(detail))]
    except KeyError:
        raise ValueError(f"no caption prompt for language {language!r} (have: {', '.join(LANGUAGES)})") from None


def with_image(prompt: str) -> str:
    """The first user turn: the image, then the text."""
    return f"{IMAGE_TOKEN}\n{prompt}"


def caption_language(text: str) -> str:
    """The language of a caption that comes without one: "zh" when it has CJK characters, else "en"."""
    return "zh" if _CJK.search(text) else "en"


def conversation_language(turns: list[dict]) -> str:
    """The language a conversation is asked in: that of its first user turn (the image aside)."""
    return caption_language(turns[0]["content"].replace(IMAGE_TOKEN, ""))


def hint_texts_of(sample: Sample, languages=LANGUAGES) -> dict[str, str]:
    """A sample's captions that others may be shown as hints, by language (its name, for emoji)."""
    return dict(_captions(sample, languages))


def with_hints(turns: list[dict], texts: list[str]) -> list[dict]:
    """`turns` with `texts` (captions of similar images) on a line after the image; unchanged without texts."""
    if not texts:
        return turns
    label, separator, end = _HINT_LINES[conversation_language(turns)]
    line = label + separator.join(" ".join(t.split()) for t in texts) + end
    rest = turns[0]["content"].replace(IMAGE_TOKEN, "", 1).strip()
    return [{"role": "user", "content": f"{IMAGE_TOKEN}\n{line}" + (f"\n{rest}" if rest else "")}, *turns[1:]]


def conversation_problem(conversation) -> str | None:
    """Why a conversation breaks the rules above (a short reason, usable as a skip counter key), or None."""
    if not isinstance(conversation, list) or not conversation:
        return "empty_conversation"
    for i, turn in enumerate(conversation):
        if not isinstance(turn, dict) or turn.get("role") != ROLES[i % 2] or not isinstance(turn.get("content"), str):
            return "bad_roles"
        if not turn["content"].strip():
            return "empty_turn"
    if len(conversation) < 2:
        return "no_assistant_turn"
    if conversation[-1]["role"] != "assistant":
        return "unanswered_turn"
    count = sum(turn["content"].count(IMAGE_TOKEN) for turn in conversation)
    if count == 0:
        return "image_token_missing"
    if count > 1:
        return "image_token_repeated"
    first = conversation[0]["content"]
    if not (first == IMAGE_TOKEN or first.startswith(IMAGE_TOKEN + "\n")):
        return "image_token_misplaced"
    return None


def conversations_of(sample: Sample, languages=LANGUAGES) -> list[list[dict]]:
    """Every candidate training conversation of one sample (new lists each call; deterministic)."""
    for language in languages:
        caption_prompt(language)  # an unknown language fails here, whatever the source
    if sample.meta.get("conversations"):
        return [[dict(turn) for turn in sample.meta["conversations"]]]
    if _is_emoji(sample):
        return [c for language in languages for c in _emoji_conversations(sample, language)]
    return [_single(caption_prompt(language), caption) for language, caption in _captions(sample, languages)]


def alt_text_of(sample: Sample, language: str) -> str:
    """The reference alt text of a sample in `language` (what eval scores generated captions against)."""
    if _is_emoji(sample) and sample.captions.get(language):
        return _emoji_alt_text(sample, language)
    return sample.captions.get(language) or sample.caption


# ---------------------------------------------------------------------------------------------


def _single(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": with_image(prompt)}, {"role": "assistant", "content": answer}]


def _dialogue(pairs: list[tuple[str, str]]) -> list[dict]:
    """(question, answer) pairs -> one conversation; the image goes with the first question only."""
    turns = _single(*pairs[0])
    for question, answer in pairs[1:]:
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return turns


def _captions(sample: Sample, languages) -> list[tuple[str, str]]:
    """(language, caption) pairs: the sample's captions in `languages`; else its one caption, in its
    own language (a manifest's caption is all there is, whatever `languages` asks for)."""
    pairs = [(lang, sample.captions[lang].strip()) for lang in languages if (sample.captions.get(lang) or "").strip()]
    if not pairs and sample.caption.strip():
        pairs = [(caption_language(sample.caption), sample.caption.strip())]
    return pairs


def _is_emoji(sample: Sample) -> bool:
    return "concept" in sample.meta and "group" in sample.meta


def _emoji_alt_text(sample: Sample, language: str) -> str:
    """One short sentence from name and group; the CLDR name stays verbatim ("The keycap * emoji"),
    so a generated caption can be checked for the exact name."""
    name, group = sample.captions[language], sample.meta.get("group")
    if language == "zh":
        group_zh = GROUPS_ZH.get(group or "")
        return f"一个“{name}”表情符号，属于{group_zh}类。" if group_zh else f"一个“{name}”表情符号。"
    return f"The {name} emoji, from {group}." if group else f"The {name} emoji."


def _emoji_detail(sample: Sample, language: str) -> str:
    """A longer description: name, art style, group and (in English) subgroup."""
    from .emoji import STYLE_NAMES  # only emoji samples get here, so the emoji packages are there

    name, group, subgroup = sample.captions[language], sample.meta.get("group"), sample.meta.get("subgroup")
    style = STYLE_NAMES.get(sample.meta.get("style"), "")
    if language == "zh":
        text = f"这是一个{style}风格的“{name}”表情符号，画在白色背景上。" if style else f"这是一个“{name}”表情符号。"
        return text + (f"它属于Unicode表情符号中的{GROUPS_ZH[group]}类。" if group in GROUPS_ZH else "")
    text = f"The {name} emoji, drawn in the {style} style on a white background." if style else f"The {name} emoji."
    if group:
        text += f" It is in the {group} group of Unicode emoji"
        text += f", subgroup {subgroup}." if subgroup else "."
    return text


def _emoji_conversations(sample: Sample, language: str) -> list[list[dict]]:
    name = sample.captions.get(language)
    if not name:
        return []
    asked = QUESTIONS[language]
    group = sample.meta.get("group")
    group_answer = GROUPS_ZH.get(group or "") if language == "zh" else group
    subgroup = sample.meta.get("subgroup") if "subgroup" in asked else None

    conversations = [_single(asked["name"], name)]
    if group_answer:
        conversations.append(_single(asked["group"], group_answer))
    if subgroup:
        conversations.append(_single(asked["subgroup"], subgroup))
    conversations.append(_single(caption_prompt(language), _emoji_alt_text(sample, language)))
    conversations.append(_single(caption_prompt(language, detail=True), _emoji_detail(sample, language)))
    follow_ups = [(asked["group"], group_answer)] if group_answer else []
    if subgroup:
        follow_ups.append((asked["subgroup"], subgroup))
    if follow_ups:  # the name, then the group (and subgroup) as later turns without the image token
        conversations.append(_dialogue([(asked["name"], name), *follow_ups]))
    return conversations
