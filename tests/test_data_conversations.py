import json

import pytest
from PIL import Image

from visembed.data import DataError, Sample, open_dataset
from visembed.data.conversations import (
    ALT_TEXT_MAX,
    GROUPS_ZH,
    IMAGE_TOKEN,
    alt_text_of,
    caption_prompt,
    conversation_problem,
    conversations_of,
    hint_texts_of,
    with_hints,
)


def check_conversation(conversation):
    """The structural rules every training conversation keeps, whatever its source."""
    assert isinstance(conversation, list) and len(conversation) >= 2
    for i, turn in enumerate(conversation):
        assert set(turn) == {"role", "content"}
        assert turn["role"] == ("user" if i % 2 == 0 else "assistant")
        assert isinstance(turn["content"], str) and turn["content"].strip()
    assert conversation[-1]["role"] == "assistant"
    first = conversation[0]["content"]
    assert first.startswith(IMAGE_TOKEN + "\n") or first == IMAGE_TOKEN
    assert sum(turn["content"].count(IMAGE_TOKEN) for turn in conversation) == 1
    assert conversation_problem(conversation) is None  # the module's own check agrees


def answer_to(conversations, question):
    """The answer to a single-turn question, or None."""
    answers = [c[1]["content"] for c in conversations if len(c) == 2 and c[0]["content"] == f"{IMAGE_TOKEN}\n{question}"]
    assert len(answers) <= 1
    return answers[0] if answers else None


def emoji_sample(concept, style="openmoji"):
    """A Sample as EmojiDataset builds it, without rendering the image."""
    return Sample(
        id=f"{style}-{concept.stem}", image="", caption=concept.en, captions={"en": concept.en, "zh": concept.zh},
        meta={"style": style, "emoji": concept.char, "concept": concept.concept, "group": concept.group,
              "subgroup": concept.subgroup},
    )


def test_emoji_samples_give_bilingual_questions_alt_text_and_dialogues(tmp_path):
    ds = open_dataset(f"builtin:emoji?limit=4&size=32&cache={tmp_path}", "val")
    for sample in ds:
        conversations = conversations_of(sample)
        assert conversations == conversations_of(sample)  # deterministic
        for conversation in conversations:
            check_conversation(conversation)
        en, zh, group = sample.captions["en"], sample.captions["zh"], sample.meta["group"]
        assert answer_to(conversations, "What is this?") == en
        assert answer_to(conversations, "这是什么？") == zh
        assert answer_to(conversations, "Which emoji group is this in?") == group
        assert answer_to(conversations, "这个表情符号属于哪个类别？") == GROUPS_ZH[group]
        assert answer_to(conversations, "Which emoji subgroup is this in?") == sample.meta["subgroup"]
        for language, name in (("en", en), ("zh", zh)):
            alt = answer_to(conversations, caption_prompt(language))
            assert alt == alt_text_of(sample, language) and name in alt
            detail = answer_to(conversations, caption_prompt(language, detail=True))
            assert name in detail and len(detail) > len(alt)
        assert group in answer_to(conversations, caption_prompt("en"))
        assert GROUPS_ZH[group] in answer_to(conversations, caption_prompt("zh"))
        assert sample.meta["subgroup"] in answer_to(conversations, caption_prompt("en", detail=True))
        dialogues = [c for c in conversations if len(c) > 2]
        assert {caption_language(d) for d in dialogues} == {"en", "zh"}
        assert all(IMAGE_TOKEN not in turn["content"] for d in dialogues for turn in d[1:])
        english_only = conversations_of(sample, languages=("en",))
        assert english_only and all("这" not in c[0]["content"] for c in english_only)


def caption_language(conversation):
    return "zh" if "这" in conversation[0]["content"] else "en"


def test_alt_texts_of_every_emoji_are_short_and_never_image_of():
    from visembed.data.emoji import emoji_catalogue

    catalogue = emoji_catalogue()
    assert {c.group for c in catalogue} <= set(GROUPS_ZH)  # every group has a Chinese name
    for concept in catalogue:
        sample = emoji_sample(concept)
        for language in ("en", "zh"):
            alt = alt_text_of(sample, language)
            assert 0 < len(alt) <= ALT_TEXT_MAX, alt
            assert not alt.lower().startswith(("image of", "an image of", "picture of"))
    check_conversation(conversations_of(emoji_sample(catalogue[0]))[0])
    assert alt_text_of(emoji_sample(catalogue[0]), "en").endswith(f"from {catalogue[0].group}.")


def test_caption_only_sources_give_one_conversation_per_language():
    shapes = open_dataset("builtin:shapes?n=3&size=16")
    for sample in shapes:
        (conversation,) = conversations_of(sample)
        check_conversation(conversation)
        assert conversation[0]["content"] == f"{IMAGE_TOKEN}\n{caption_prompt('en')}"
        assert conversation[1]["content"] == sample.caption == alt_text_of(sample, "en")

    both = Sample(id="x", image="", caption="a cat", captions={"en": "a cat", "zh": "一只猫"})
    conversations = conversations_of(both)
    assert [c[0]["content"].split("\n")[1] for c in conversations] == [caption_prompt("en"), caption_prompt("zh")]
    assert [c[1]["content"] for c in conversations] == ["a cat", "一只猫"]
    assert alt_text_of(both, "zh") == "一只猫"
    assert len(conversations_of(both, languages=("zh",))) == 1

    # a manifest's lone caption comes without a language: asked for in its own
    (chinese,) = conversations_of(Sample(id="y", image="", caption="一只红苹果"))
    assert chinese[0]["content"].endswith(caption_prompt("zh")) and chinese[1]["content"] == "一只红苹果"
    with pytest.raises(ValueError, match="fr"):
        conversations_of(both, languages=("fr",))


def test_prompts_ask_for_alt_text_and_details():
    assert caption_prompt() == "Describe the image in one short sentence."
    assert caption_prompt("zh") == "用一句话描述这张图片。"
    assert caption_prompt("en", detail=True) != caption_prompt("en")
    assert caption_prompt("zh", detail=True) != caption_prompt("zh")
    assert all(IMAGE_TOKEN not in caption_prompt(lang, d) for lang in ("en", "zh") for d in (False, True))


def write_png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "blue").save(path)


def human(value):
    return {"from": "human", "value": value}


def gpt(value):
    return {"from": "gpt", "value": value}


def test_llava_json_round_trip_with_relative_paths_and_counted_bad_entries(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        write_png(tmp_path / "images" / name)
    entries = [
        {"id": "one", "image": "images/a.png", "conversations": [human("<image>\nWhat colour?"), gpt("Blue.")]},
        {"image": "images/b.png", "conversations": [  # LLaVA also puts the token last: moved to the front
            human("What is it?\n<image>"), gpt("A square."), human("And the colour?"), gpt("Blue.")]},
        {"id": "one", "image": "images/c.png", "conversations": [human("<image>"), gpt("A blue square.")]},
        {"id": "text-only", "conversations": [human("Hi"), gpt("Hello")]},
        {"image": "images/a.png", "conversations": [human("<image>\nWhat colour?")]},
        {"image": "images/a.png", "conversations": [human("What colour?"), gpt("Blue.")]},
        {"image": "images/a.png", "conversations": [human("<image>\n<image>\nSame?"), gpt("Yes.")]},
        {"image": "images/a.png", "conversations": [gpt("Blue."), human("<image>\nWhat colour?")]},
        {"image": "images/gone.png", "conversations": [human("<image>\nWhat?"), gpt("Nothing.")]},
        "not an entry",
    ]
    (tmp_path / "chat.json").write_text(json.dumps(entries), encoding="utf-8")
    ds = open_dataset(str(tmp_path / "chat.json"))

    assert len(ds) == 3 and not ds.streaming
    assert ds.skipped.as_dict() == {"bad_entry": 1, "bad_roles": 1, "image_token_missing": 1,
                                    "image_token_repeated": 1, "missing_file": 1, "missing_image": 1,
                                    "no_assistant_turn": 1}
    assert [s.id for s in ds] == ["one", "images/b.png", "one#1"]
    assert ds[0].path == ds[0].image == str(tmp_path / "images" / "a.png")
    assert [s.caption for s in ds] == ["Blue.", "A square.", "A blue square."]
    assert conversations_of(ds[1]) == [[
        {"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "A square."},
        {"role": "user", "content": "And the colour?"}, {"role": "assistant", "content": "Blue."}]]
    assert conversations_of(ds[2])[0][0] == {"role": "user", "content": IMAGE_TOKEN}
    for sample in ds:
        (conversation,) = conversations_of(sample)
        check_conversation(conversation)
        assert alt_text_of(sample, "en") == sample.caption
    conversations_of(ds[0])[0].append({"role": "user", "content": "changed"})
    assert len(conversations_of(ds[0])[0]) == 2  # callers get copies


def test_llava_json_split_field_is_honoured_like_manifests(tmp_path):
    write_png(tmp_path / "a.png")
    entries = [{"image": "a.png", "split": split, "conversations": [human("<image>\nQ"), gpt(f"in {split}")]}
               for split in ("train", "validation", "train")]
    (tmp_path / "d.json").write_text(json.dumps(entries), encoding="utf-8")
    assert len(open_dataset(str(tmp_path / "d.json"), "train")) == 2
    assert [s.caption for s in open_dataset(str(tmp_path / "d.json"), "val")] == ["in validation"]
    assert len(open_dataset(str(tmp_path / "d.json"), "all")) == 3
    with pytest.raises(DataError, match="split"):
        open_dataset(str(tmp_path / "d.json"), "test")


@pytest.mark.parametrize("content", [
    '{"image": "a.png", "conversations": []}',
    '["a.png", "b.png"]',
    '[{"image": "a.png", "caption": "no conversations"}]',
    "[]",
    "[{not json",
])
def test_a_json_that_is_not_a_list_of_conversations_is_a_data_error(tmp_path, content):
    (tmp_path / "bad.json").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="bad.json"):
        open_dataset(str(tmp_path / "bad.json"))


def test_a_llava_json_without_one_usable_entry_fails_when_opened(tmp_path):
    entries = [{"image": "missing.png", "conversations": [human("<image>\nQ"), gpt("A")]}]
    (tmp_path / "d.json").write_text(json.dumps(entries), encoding="utf-8")
    with pytest.raises(DataError, match="missing.png"):
        open_dataset(str(tmp_path / "d.json"))


@pytest.mark.parametrize("conversation, problem", [
    ([], "empty_conversation"),
    ([{"role": "user", "content": "<image>\nQ"}], "no_assistant_turn"),
    ([{"role": "assistant", "content": "A"}, {"role": "user", "content": "<image>\nQ"}], "bad_roles"),
    ([{"role": "user", "content": "Q <image>"}, {"role": "assistant", "content": "A"}], "image_token_misplaced"),
    ([{"role": "user", "content": "<image>\nQ"}, {"role": "assistant", "content": "A"},
      {"role": "user", "content": "Q2"}], "unanswered_turn"),
    ([{"role": "user", "content": "<image>\nQ"}, {"role": "assistant", "content": " "}], "empty_turn"),
])
def test_conversation_problem_names_what_is_wrong(conversation, problem):
    assert conversation_problem(conversation) == problem


def test_hints_go_on_a_line_after_the_image_in_the_conversation_language():
    english = [{"role": "user", "content": f"{IMAGE_TOKEN}\nWhat is this?"}, {"role": "assistant", "content": "a dog"}]
    hinted = with_hints(english, ["dog face", "wolf  face"])
    assert hinted[0]["content"] == f"{IMAGE_TOKEN}\nSimilar: dog face; wolf face.\nWhat is this?"
    assert hinted[1:] == english[1:] and english[0]["content"] == f"{IMAGE_TOKEN}\nWhat is this?"  # a new list
    assert conversation_problem(hinted) is None
    chinese = [{"role": "user", "content": f"{IMAGE_TOKEN}\n这是什么？"}]
    assert with_hints(chinese, ["狗脸", "狼脸"])[0]["content"] == f"{IMAGE_TOKEN}\n相似：狗脸；狼脸。\n这是什么？"
    assert with_hints(english, []) is english
    assert with_hints([{"role": "user", "content": IMAGE_TOKEN}], ["x"])[0]["content"] == f"{IMAGE_TOKEN}\nSimilar: x."


def test_a_samples_hint_texts_are_its_captions_by_language():
    both = Sample(id="x", image="", caption="a cat", captions={"en": "a cat", "zh": "一只猫"})
    assert hint_texts_of(both) == {"en": "a cat", "zh": "一只猫"}
    assert hint_texts_of(Sample(id="y", image="", caption="一只红苹果")) == {"zh": "一只红苹果"}
    assert hint_texts_of(Sample(id="z", image="", caption="")) == {}
