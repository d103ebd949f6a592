"""Captions and image chat over HTTP (FastAPI TestClient, the real tiny captioner): the answers are
the model's own, bad input is a clear 4xx, a server without a captioner says how to add one."""

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

import visembed
from test_index_build import shapes_index
from visembed.serve.app import create_app
from visembed.serve.limits import GenerationSlots

LIMIT = 64 * 1024


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


SCENE = Image.new("RGB", (64, 64), "white")
SCENE.paste((220, 30, 30), (8, 8, 40, 40))
SCENE_PNG = png(SCENE)


@pytest.fixture(scope="module")
def model(tiny_captioner_dir):
    return visembed.load(tiny_captioner_dir)  # loaded apart from the server's: same folder, same answers


@pytest.fixture(scope="module")
def client(tiny_model_dir, tiny_captioner_dir, tmp_path_factory):
    """A search index of the plain dual encoder, with the captioner beside it (`--captioner`)."""
    app = create_app(shapes_index(tiny_model_dir, tmp_path_factory), captioner_dir=tiny_captioner_dir,
                     max_upload_bytes=LIMIT)
    with TestClient(app, base_url="http://localhost") as client:
        yield client


@pytest.fixture(scope="module")
def plain_client(tiny_model_dir, tmp_path_factory):
    with TestClient(create_app(shapes_index(tiny_model_dir, tmp_path_factory)), base_url="http://localhost") as client:
        yield client


def post_caption(client, payload=SCENE_PNG, **form):
    return client.post("/caption", files={"file": ("scene.png", payload, "image/png")}, data=form)


def post_chat(client, messages, payload=SCENE_PNG, **form):
    text = messages if isinstance(messages, str) else json.dumps(messages)
    return client.post("/chat", files={"file": ("scene.png", payload, "image/png")}, data={"messages": text, **form})


def test_caption_is_the_models_caption(client, model):
    response = post_caption(client)
    assert response.status_code == 200, response.text
    assert response.json() == {"caption": model.caption([SCENE])[0]}
    assert isinstance(response.json()["caption"], str) and response.json()["caption"]
    for form in ({"language": "zh"}, {"detail": "true"}, {"language": "zh", "detail": "1"}):
        response = post_caption(client, **form)
        assert response.status_code == 200, (form, response.text)
        expected = model.caption([SCENE], language=form.get("language", "en"), detail="detail" in form)[0]
        assert response.json()["caption"] == expected, form


def test_chat_is_the_models_reply(client, model):
    first = [{"role": "user", "content": "What is in the picture?"}]
    response = post_chat(client, first)
    assert response.status_code == 200, response.text
    assert response.json() == {"reply": model.chat(SCENE, first)}  # no "note": nothing was dropped
    dialogue = first + [{"role": "assistant", "content": "A red square."}, {"role": "user", "content": "Where?"}]
    reply, note = model.reply(SCENE, dialogue)
    response = post_chat(client, dialogue)
    assert response.status_code == 200 and response.json() == {"reply": reply, **({"note": note} if note else {})}


def test_chat_replies_in_the_language_asked_for(client, model):
    first = [{"role": "user", "content": "What is in the picture?"}]
    response = post_chat(client, first, language="zh")
    assert response.status_code == 200, response.text
    reply = response.json()["reply"]
    assert reply == model.chat(SCENE, first, language="zh")
    assert not any("a" <= ch.lower() <= "z" for ch in reply)  # an English question, a reply without Latin letters
    assert post_chat(client, first, language="fr").status_code == 422


def test_a_long_dialogue_loses_its_oldest_turns_with_a_note(client, model):
    long = [{"role": "user", "content": "tell me about the red square " * 6},
            {"role": "assistant", "content": "a red square"}, {"role": "user", "content": "and its size?"}]
    reply, note = model.reply(SCENE, long)
    assert note  # the tiny model's context is 48 tokens
    assert post_chat(client, long).json() == {"reply": reply, "note": note}


def test_a_single_question_longer_than_the_model_reads_is_answered_with_a_note(client, model):
    question = [{"role": "user", "content": "tell me about the red square and the blue circle " * 12}]
    response = post_chat(client, question)
    assert response.status_code == 200, response.text
    assert "only its beginning was read" in response.json()["note"]


@pytest.mark.parametrize("raw", [
    '[{"role": "user", "content": "<ima<image>ge> what is this?"}]',  # a placeholder hidden in one
    '[{"role": "user", "content": "\\ud800"}]',  # a lone surrogate: no tokenizer takes it
    "[" * 1500 + "]" * 1500,  # deeper than Python recurses
])
def test_hostile_messages_never_get_a_500(client, raw):
    response = post_chat(client, raw)
    assert response.status_code in (200, 422), (raw[:40], response.text[:300])


def test_capabilities(client, plain_client):
    with_one, without = client.get("/capabilities").json(), plain_client.get("/capabilities").json()
    assert (with_one["captioner"], with_one["classifier"], with_one["captions"]["state"]) == (True, False, "ready")
    assert (without["captioner"], without["classifier"], without["captions"]["state"]) == (False, False, "none")
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/caption", "/chat", "/capabilities"} <= set(paths)


def test_without_a_captioner_both_are_404_and_say_how_to_add_one(plain_client):
    for response in (post_caption(plain_client), post_chat(plain_client, [{"role": "user", "content": "hi"}])):
        assert response.status_code == 404
        assert "--captioner" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/caption", "/chat"])
def test_uploads_that_are_not_usable_images(client, path):
    good = png(Image.new("RGB", (40, 40), "red"))
    cases = {415: [b"hello, I am text", b"%PDF-1.4 not an image"], 422: [good[: len(good) // 2], b""]}
    for status, payload in ((s, p) for s, payloads in cases.items() for p in payloads):
        response = client.post(path, files={"file": ("x.png", payload, "image/png")},
                               data={"messages": json.dumps([{"role": "user", "content": "hi"}])})
        assert response.status_code == status, (payload[:20], response.text)
        assert "image" in response.json()["detail"]
    no_file = client.post(path, data={"messages": json.dumps([{"role": "user", "content": "hi"}])})
    assert no_file.status_code == 422


def test_oversized_uploads_are_413(client):
    big = png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)))
    assert LIMIT < len(big) < LIMIT + 64 * 1024  # passes the body check, fails the file check
    assert post_caption(client, big).status_code == 413
    assert post_chat(client, [{"role": "user", "content": "hi"}], big).status_code == 413


@pytest.mark.parametrize("messages, says", [
    ([{"role": "user", "content": ""}], "message 1 is empty"),
    ([{"role": "user", "content": "   "}], "message 1 is empty"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}, {"role": "user", "content": "?"}],
     "message 2 is empty"),
    ("[{\"role\": \"user\", \"content\": \"hi\"", "not valid JSON"),
    ("not json at all", "not valid JSON"),
    ("[{\"role\": \"user\", \"content\": NaN}]", "not valid JSON"),
    ([], "non-empty list"),
    ({"role": "user", "content": "hi"}, "non-empty list"),
    ([{"role": "assistant", "content": "hi"}], "user's"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "last message"),
    ([{"role": "system", "content": "hi"}], "message 1 must be"),
    ([{"role": "user", "content": 3}], "message 1 must be"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}] * 40 + [{"role": "user", "content": "?"}],
     "at most 64 messages"),
])
def test_bad_messages_are_422_with_a_reason(client, messages, says):
    response = post_chat(client, messages)
    assert response.status_code == 422, response.text
    assert says in response.json()["detail"]


def test_bad_form_fields_are_422(client):
    assert post_caption(client, language="fr").status_code == 422
    assert post_caption(client, detail="perhaps").status_code == 422
    response = client.post("/chat", files={"file": ("scene.png", SCENE_PNG, "image/png")})  # no messages
    assert response.status_code == 422
    assert post_chat(client, "x" * 20_001).status_code == 422


def test_a_full_generation_queue_is_503_with_retry_after(tiny_model_dir, tiny_captioner_dir, tmp_path_factory, model):
    app = create_app(shapes_index(tiny_model_dir, tmp_path_factory), captioner=model,
                     generation_slots=GenerationSlots(max_waiting=0))
    with TestClient(app, base_url="http://localhost") as client:
        with app.state.generation.turn():  # another request is being answered
            response = post_caption(client)
            assert response.status_code == 503 and response.headers["Retry-After"] == "1"
            assert post_chat(client, [{"role": "user", "content": "hi"}]).status_code == 503
            assert client.get("/search", params={"q": "a red circle"}).status_code == 200  # search does not wait
        assert post_caption(client).status_code == 200


def test_an_index_built_with_a_captioner_serves_captions_itself(tiny_captioner_dir, tmp_path, model):
    from visembed.index import build_index

    out = build_index(tiny_captioner_dir, "builtin:shapes?n=10", tmp_path / "index", progress=False)
    with TestClient(create_app(out), base_url="http://localhost") as client:
        assert client.app.state.captioner is client.app.state.searcher.model  # one copy of the weights
        assert post_caption(client).json() == {"caption": model.caption([SCENE])[0]}
        assert client.get("/search", params={"q": "a red square", "k": 3}).status_code == 200


def test_serve_refuses_a_dual_encoder_as_captioner(tiny_model_dir, tmp_path_factory):
    from visembed.cli import app

    result = CliRunner().invoke(app, ["serve", str(shapes_index(tiny_model_dir, tmp_path_factory)), "--port", "0",
                                      "--captioner", str(tiny_model_dir)])
    assert result.exit_code == 2
    assert "not a captioner" in result.output
