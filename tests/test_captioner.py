"""The captioner: conversations -> ids and labels, training through the one loop (both stages,
resume after SIGKILL, transformers LMs of two families), generation, and the commands."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import visembed
from visembed.checkpoint import latest_checkpoint
from visembed.data import DataError, open_dataset
from visembed.data.conversations import IMAGE_TOKEN
from visembed.models.chat_format import IGNORE, ConversationError, encode, fit_dialogue
from visembed.models.lm import train_lm_tokenizer

from conftest import TINY_CAPTIONER

REPO = Path(visembed.__file__).resolve().parents[1]
SHAPES = "builtin:shapes?n=256"


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["USER: what is this? ASSISTANT: a small red circle", "a large blue square left of a green triangle"] * 20
    return train_lm_tokenizer(texts, 300)


def _turns(*texts):
    roles = ["user", "assistant"]
    turns = [{"role": roles[i % 2], "content": t} for i, t in enumerate(texts)]
    turns[0]["content"] = f"{IMAGE_TOKEN}\n{turns[0]['content']}"
    return turns


def test_only_the_assistants_tokens_are_learnt_and_a_prompt_is_a_prefix_of_the_training_ids(tokenizer):
    turns = _turns("What is this?", "a small red circle", "And its colour?", "red")
    full = encode(tokenizer, turns, 200)
    learnt = tokenizer.decode([t for t in full.labels if t != IGNORE])
    assert learnt.replace("<eos>", "|") == " a small red circle| red|"
    assert IGNORE in full.labels[: full.image_at] and full.labels[full.image_at] == IGNORE
    prompt = encode(tokenizer, turns[:3], 200, prompt=True)
    assert full.ids[: len(prompt.ids)] == prompt.ids  # generation continues exactly where training learnt
    assert tokenizer.decode(prompt.ids[prompt.image_at:]).strip().endswith("ASSISTANT:")


def test_malformed_conversations_are_refused(tokenizer):
    with pytest.raises(ConversationError, match="exactly once"):
        encode(tokenizer, [{"role": "user", "content": "no image"}], 50)
    with pytest.raises(ConversationError, match="role 'user'"):
        encode(tokenizer, [{"role": "assistant", "content": IMAGE_TOKEN}], 50)


def test_an_overlong_dialogue_loses_its_oldest_turns_and_keeps_the_image(tokenizer):
    turns = _turns(*["a large blue square left of a green triangle"] * 7)
    last_three = _turns(*[t["content"] for t in turns[4:]])
    limit = len(encode(tokenizer, last_three, 10**6, prompt=True).ids)
    kept, dropped, cut = fit_dialogue(tokenizer, turns, limit)
    assert kept == last_three and dropped == 4 and not cut


def test_one_question_longer_than_the_context_keeps_its_beginning_and_the_reply_cue(tokenizer):
    question = " ".join(["a large blue square left of a green triangle"] * 40)
    turns = _turns(question)
    kept, dropped, cut = fit_dialogue(tokenizer, turns, 48)
    assert cut and dropped == 0 and len(kept) == 1
    assert turns[0]["content"].startswith(kept[0]["content"]) and len(kept[0]["content"]) < len(turns[0]["content"])
    prompt = encode(tokenizer, kept, 10**6, prompt=True)
    assert len(prompt.ids) <= 48 and tokenizer.decode(prompt.ids[prompt.image_at:]).strip().endswith("ASSISTANT:")


def test_a_trained_captioner_loads_and_describes_answers_and_still_embeds(tiny_captioner_dir):
    model = visembed.load(tiny_captioner_dir)
    assert model.config.model.architecture == "captioner"
    images = [open_dataset(SHAPES, "test")[i].image for i in range(3)]
    captions = model.caption(images)
    assert len(captions) == 3 and all(isinstance(c, str) and 0 < len(c) <= 125 for c in captions)
    assert model.caption(images[:1]) == captions[:1]  # greedy: the same image, the same caption
    reply = model.chat(images[0], [{"role": "user", "content": "What is this?"}])
    assert isinstance(reply, str)
    assert model.encode_image(images).shape == (3, model.embed_dim)
    with pytest.raises(ValueError, match="empty"):
        model.chat(images[0], [{"role": "user", "content": "  "}])


def test_batched_generation_with_prompts_of_different_lengths_equals_one_by_one(tiny_captioner_dir):
    model = visembed.load(tiny_captioner_dir)
    module = model.module
    images = [open_dataset(SHAPES, "test")[i].image for i in range(2)]
    limit = model.config.model.captioner.max_tokens
    prompts = [encode(module.tokenizer, turns, limit, prompt=True)
               for turns in (_turns("What is this?"), _turns("Describe every shape you see in this picture, please."))]
    assert len(prompts[0].ids) != len(prompts[1].ids)  # left padding is exercised
    pixels = model.pixels(images)
    together = module.generate(pixels, prompts, 12)
    alone = [module.generate(pixels[i : i + 1], prompts[i : i + 1], 12)[0] for i in range(2)]
    assert [t for t, _ in together] == [t for t, _ in alone]


def test_align_trains_the_projector_only_and_instruct_trains_the_lm(tiny_captioner_dir):
    align = load_file(str(tiny_captioner_dir / "align" / "model.safetensors"))
    final = load_file(str(tiny_captioner_dir / "model.safetensors"))
    vision = load_file(str(Path(visembed.load(tiny_captioner_dir).config.model.captioner.vision) / "model.safetensors"))
    for name, value in vision.items():  # the dual encoder is frozen throughout
        assert torch.equal(final[f"encoder.{name}"], value), name
    moved = [n for n in final if n.startswith("lm.") and not torch.equal(final[n], align[n])]
    assert moved, "the instruct stage left the LM untouched"
    assert any(not torch.equal(final[n], align[n]) for n in final if "projector" in n)


def test_caption_eval_reports_generation_beside_the_nearest_neighbour_baseline(tiny_captioner_dir):
    from visembed.eval.run import evaluate_folder

    metrics = evaluate_folder(tiny_captioner_dir, SHAPES, "test", limit=16, progress=False)
    for name in ("caption_BLEU-4", "caption_ROUGE-L", "caption_CIDEr", "nn_caption_CIDEr"):
        assert isinstance(metrics[name], float), name
    assert metrics["nn_caption_CIDEr"] > 0  # the baseline repeats real training captions
    assert (tiny_captioner_dir / "eval_test.json").is_file()


def _tiny_hf_lm(folder: Path, family: str) -> Path:
    """A random LM of `family` built with transformers' own config class, with a tokenizer that has
    no <image> token and no padding token (as many released LMs)."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["a small red circle left of a blue square"] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    sizes = dict(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                 bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(**sizes)) if family == "llama" else Qwen2ForCausalLM(Qwen2Config(**sizes))
    lm.save_pretrained(folder)
    hf_tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_a_local_transformers_lm_of_either_family_becomes_a_captioner(family, tiny_model_dir, tmp_path):
    from visembed.train.captioner_run import captioner_config, train_captioner

    lm_dir = _tiny_hf_lm(tmp_path / family, family)
    # (its tokenizer knows few words: prompts take many tokens)
    cfg = captioner_config(tiny_model_dir, SHAPES, lm=str(lm_dir), steps=4,
                           overrides=TINY_CAPTIONER + ["model.captioner.max_tokens=200"])
    train_captioner(cfg, tmp_path / "cap", stage="both", progress=False)
    model = visembed.load(tmp_path / "cap")
    assert type(model.module.lm).__name__.lower().startswith(family)
    assert IMAGE_TOKEN in model.module.tokenizer.get_vocab()
    source = load_file(str(lm_dir / "model.safetensors"))
    align = load_file(str(tmp_path / "cap" / "align" / "model.safetensors"))
    assert all(f"lm.{n}" in align for n in source), "the LM's weights are not all in the captioner"
    # a pretrained LM stays as it was while the projector aligns to it
    for name, value in source.items():
        kept = align[f"lm.{name}"][: len(value)]  # (embeddings and head grew by a row for <image>)
        assert torch.equal(kept, value), name
    assert isinstance(model.caption([open_dataset(SHAPES, "test")[0].image])[0], str)


def test_an_lm_that_does_not_fit_the_projector_fails_at_load_naming_both(tiny_captioner_dir, tmp_path):
    import shutil

    from visembed.checkpoint import ModelFolderError

    broken = tmp_path / "broken"
    shutil.copytree(tiny_captioner_dir, broken, ignore=shutil.ignore_patterns("checkpoints", "align"))
    config = json.loads((broken / "lm" / "config.json").read_text())
    config["n_embd"] = 48
    (broken / "lm" / "config.json").write_text(json.dumps(config))
    # caught before anything is built: the config's shapes against the weights' header (checkpoint.build_fitting)
    with pytest.raises(ModelFolderError, match=r"(?s)do not fit the model.*lm\.transformer\.wte\.weight.*32\].*48\]"):
        visembed.load(broken)


def test_a_sample_with_nothing_left_to_learn_is_an_error_naming_it(tiny_model_dir, tmp_path):
    from PIL import Image

    from visembed.train.captioner_run import captioner_config, train_captioner

    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    question = IMAGE_TOKEN + "\n" + "please describe " * 60
    entries = [{"id": f"long{i}", "image": "red.png",
                "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": "red"}]}
               for i in range(4)]
    (tmp_path / "chat.json").write_text(json.dumps(entries))
    cfg = captioner_config(tiny_model_dir, str(tmp_path / "chat.json"), steps=2, overrides=TINY_CAPTIONER)
    with pytest.raises(DataError, match=r"long\d.*nothing to learn"):
        train_captioner(cfg, tmp_path / "cap", stage="instruct", progress=False)


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "visembed.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300, **kw)


def test_caption_and_chat_commands(tiny_captioner_dir, tmp_path):
    image = open_dataset(SHAPES, "test")[0].image
    path = tmp_path / "shape.png"
    (image if hasattr(image, "save") else __import__("PIL.Image").Image.open(image)).save(path)
    expected = visembed.load(tiny_captioner_dir).caption([str(path)])[0]
    result = _cli("caption", tiny_captioner_dir, path, path, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"image": str(path), "caption": expected}] * 2
    result = _cli("chat", tiny_captioner_dir, "--image", path, "--message", "What is this?")
    assert result.returncode == 0 and result.stdout.strip() == visembed.load(tiny_captioner_dir).chat(
        str(path), [{"role": "user", "content": "What is this?"}])
    interactive = _cli("chat", tiny_captioner_dir, "--image", path, input="What is this?\nAnd the colour?\n\n")
    assert interactive.returncode == 0 and interactive.stdout.count("visembed> ") == 2
    (tmp_path / "broken.png").write_bytes(b"not an image")
    bad = _cli("caption", tiny_captioner_dir, tmp_path / "broken.png")
    assert bad.returncode == 2 and "broken.png" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


ARGS = ["--data", SHAPES, "--steps", "8", "--no-progress"] + [a for o in TINY_CAPTIONER for a in ("--set", o)] + [
    "--set", "train.checkpoint_every=2"]


def _train(vision: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "visembed.cli", "train-captioner", "--vision", str(vision),
                             "--out", str(out), *ARGS, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=REPO)


@pytest.mark.slow
def test_sigkill_in_either_stage_then_resume_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    whole = _train(tiny_model_dir, tmp_path / "whole")
    killed = _train(tiny_model_dir, tmp_path / "killed")
    deadline = time.time() + 240
    while latest_checkpoint(tmp_path / "killed") is None and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # the instruct stage's first checkpoint: the align stage is done
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "model.safetensors").exists(), "the run finished before it could be killed"
    out, _ = _train(tiny_model_dir, tmp_path / "killed", "--resume").communicate(timeout=300)
    assert "already finished" in out and "resuming from" in out, out
    assert whole.communicate(timeout=300)[0] is not None and whole.returncode == 0
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model.safetensors"))
    different = [n for n in a if not torch.equal(a[n], b[n])]
    assert a.keys() == b.keys() and not different, f"resumed weights differ in {different[:5]}"


def test_exporting_a_captioner_to_transformers_says_why_not(tiny_captioner_dir, tmp_path):
    from visembed.interop.hf_export import ExportError, export_hf

    with pytest.raises(ExportError, match="embedding_tokens is 4.*LlavaForConditionalGeneration.*embedding_tokens=0"):
        export_hf(tiny_captioner_dir, tmp_path / "out")


def test_a_captioner_exports_its_dual_encoder_to_onnx(tiny_captioner_dir, tmp_path):
    import numpy as np
    import onnxruntime

    from visembed.interop.onnx import export_onnx

    export_onnx(tiny_captioner_dir, tmp_path / "onnx")
    model = visembed.load(tiny_captioner_dir)
    pixels = model.pixels([open_dataset(SHAPES, "test")[0].image]).numpy()
    graph = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "image_encoder.onnx"))
    (ours,) = graph.run(None, {"pixels": pixels})
    np.testing.assert_allclose(ours, model.encode_image([open_dataset(SHAPES, "test")[0].image]), atol=1e-4)


@pytest.mark.slow
def test_train_captioner_runs_under_torchrun_with_two_processes(tiny_model_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = ["--data", SHAPES, "--steps", "4", "--no-progress"] + [a for o in TINY_CAPTIONER for a in ("--set", o)]
    done = subprocess.run([*torchrun, "-m", "visembed.cli", "train-captioner", "--vision", str(tiny_model_dir),
                           "--out", str(tmp_path / "two"), *args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    final = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["world_size"] == 2 and final["final"]
    assert isinstance(visembed.load(tmp_path / "two").caption([open_dataset(SHAPES, "test")[0].image])[0], str)


def test_preparing_the_lm_assets_again_replaces_what_a_killed_run_left(tmp_path):
    from visembed.config import CaptionerConfig
    from visembed.models.lm import LM_DIR, prepare_lm_assets

    cfg = CaptionerConfig(vocab_size=300)
    prepare_lm_assets(cfg, ["a small red circle"] * 5, tmp_path)
    prepare_lm_assets(cfg, ["a large blue square"] * 5, tmp_path)  # a fresh run over the same folder
    assert "square" in (tmp_path / LM_DIR / "tokenizer.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == [LM_DIR]  # no temporary folder left behind


def _closed(model):
    """The captioner as before open vocabularies: hints from its training captions only, the LM's
    beams as they come (tests/test_captioner_naming.py tests the rest)."""
    from visembed.models.caption_constraints import Naming

    model.use_vocabulary(["none"])
    model.naming = Naming(rules=False)
    return model


def test_the_prompt_names_the_training_captions_closest_to_the_image(tiny_captioner_dir):
    from visembed.data.conversations import caption_prompt, with_hints
    from visembed.models.chat_format import encode_with_hints

    model = _closed(visembed.load(tiny_captioner_dir))
    module = model.module
    bank = json.loads((tiny_captioner_dir / "hints.json").read_text())
    training = list(dict.fromkeys(s.caption for s in open_dataset("builtin:shapes?n=256", "train")))
    assert bank == {"en": training} and module.hints == 3

    image = open_dataset(SHAPES, "test")[0].image
    features = module.features(model.pixels([image]))
    (hints,) = module.hints_for(features, ["en"])
    scores = model.encode_text(bank["en"]) @ model.encode_image([image])[0]  # the dual encoder's own ranking
    assert hints == [bank["en"][i] for i in scores.argsort()[::-1][:3]]
    (without_first,) = module.hints_for(features, ["en"], exclude=[{hints[0]}])
    assert without_first[:2] == hints[1:] and hints[0] not in without_first and len(without_first) == 3
    assert module.hints_for(features, ["fr"]) == [[]]  # no bank in that language: no hints

    # captions are generated from the prompt with the hints
    turns = _turns(caption_prompt("en"))
    limit = model.config.model.captioner.max_tokens
    hinted = encode_with_hints(module.tokenizer, turns, hints, limit, prompt=True)
    assert hinted.ids == encode(module.tokenizer, with_hints(turns, hints), limit, prompt=True).ids
    plain = encode(module.tokenizer, turns, limit, prompt=True)
    pixels = model.pixels([image])
    (expected,) = module.generate(pixels, [hinted], 16)
    (unhinted,) = module.generate(pixels, [plain], 16)
    (got,) = model._answer([image], [turns], 16)
    assert got == expected and got[1] != unhinted[1]


def test_hints_never_push_an_answer_out_of_the_context(tiny_captioner_dir):
    from visembed.models.chat_format import encode_with_hints

    tokenizer = visembed.load(tiny_captioner_dir).module.tokenizer
    turns = _turns("What is this?") + [{"role": "assistant", "content": "a red circle"}]
    whole = len(encode(tokenizer, turns, 10**9).ids)
    hints = ["a big blue square", "a small green triangle", "a red circle on white"]
    fitted = encode_with_hints(tokenizer, turns, hints, whole + 1)
    assert len(fitted.ids) <= whole + 1 and fitted.labels[-1] != IGNORE  # the answer's eos is still learnt
    assert encode_with_hints(tokenizer, turns, hints, whole).ids == encode(tokenizer, turns, whole).ids
    assert len(encode_with_hints(tokenizer, turns, hints, 10**6).ids) > whole + 10


def test_a_captioner_trained_without_hints_has_no_bank(tiny_model_dir, tmp_path):
    from visembed.train.captioner_run import captioner_config, train_captioner
    from visembed.train.tasks.captioning import CaptioningTask

    cfg = captioner_config(tiny_model_dir, "builtin:shapes?n=64", steps=2,
                           overrides=TINY_CAPTIONER + ["model.captioner.hints=0"])
    train_captioner(cfg, tmp_path / "cap", stage="align", progress=False)
    assert not (tmp_path / "cap" / "hints.json").exists()
    module = visembed.load(tmp_path / "cap").module
    assert module.hints == 0 and module.hints_for(module.features(torch.zeros(1, 3, 32, 32)), ["en"]) == [[]]
    sample = open_dataset("builtin:shapes?n=64", "train")[0]
    assert CaptioningTask(cfg).candidates(sample).own == {"en": sample.caption}  # left out of its own hints


def test_a_caption_is_the_candidate_the_dual_encoder_puts_closest_to_the_image(tiny_captioner_dir):
    from visembed.data.conversations import caption_prompt
    from visembed.models.chat_format import encode_with_hints
    from visembed.models.inference import _alt_text

    model = _closed(visembed.load(tiny_captioner_dir))
    module = model.module
    images = [open_dataset(SHAPES, "test")[i].image for i in range(3)]
    pixels = model.pixels(images)
    features = module.features(pixels)
    limit = model.config.model.captioner.max_tokens
    prompts = [encode_with_hints(module.tokenizer, _turns(caption_prompt("en")), hints, limit, prompt=True)
               for hints in module.hints_for(features, ["en"] * 3)]
    found = module.generate_candidates(pixels, prompts, 12, 4, features=features, no_repeat=3)
    assert [len(group) for group in found] == [4, 4, 4]
    assert all(0 < confidence <= 1 for group in found for _, confidence in group)
    texts = [[text for text, _ in group] for group in found]
    best = module.closest_texts(features, texts)
    image_vectors = model.encode_image(images)
    assert best == [int((model.encode_text(group) @ image_vectors[b]).argmax()) for b, group in enumerate(texts)]

    assert model.caption(images, candidates=4, max_new_tokens=12) == [_alt_text(*found[b][best[b]], "en", False) for b in range(3)]
    greedy = [group[0] for group in module.generate_candidates(pixels, prompts, 32, 1, no_repeat=3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert model.caption(images, candidates=1) == [_alt_text(text, conf, "en", False) for text, conf in greedy]
    assert not [w for w in caught if "no_repeat" in str(w.message)]  # nothing for a user to puzzle over
    for text, _ in greedy + [c for group in found for c in group]:  # no 3 tokens twice (a tiny LM loops)
        ids = module.tokenizer(text, add_special_tokens=False)["input_ids"]
        runs = [tuple(ids[i : i + 3]) for i in range(len(ids) - 2)]
        assert len(runs) == len(set(runs)), text
    with pytest.raises(ValueError, match="candidates"):
        model.caption(images, candidates=0)


def test_the_lm_tokenizer_keeps_chinese_punctuation_as_written():
    tokenizer = train_lm_tokenizer(["一个“笑脸”表情符号，属于笑脸和情感类。"] * 5, 300)
    text = "一个“狗”表情符号，属于动物类。"
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
