"""A captioner that arrives while the server runs (`CaptionerSlot`, as `visembed demo` serves one):
search answers at once; /caption and /chat answer 503 with Retry-After while it trains (never a
500), 404 with the reason after its training failed; GET /capabilities says which, with progress
and ETA; once the model is handed over, the same server writes captions, no restart."""

import json

import pytest
from fastapi.testclient import TestClient

import visembed
from test_index_build import shapes_index
from test_serve_caption import SCENE, post_caption, post_chat
from visembed.commands.background_captioner import StepClock, last_step
from visembed.serve.app import create_app
from visembed.serve.captioner_slot import RETRY_AFTER_MAX_S, RETRY_AFTER_UNKNOWN_S, CaptionerSlot


@pytest.fixture()
def slot_client(tiny_model_dir, tmp_path_factory):
    slot = CaptionerSlot()
    app = create_app(shapes_index(tiny_model_dir, tmp_path_factory), captioner_slot=slot)
    with TestClient(app, base_url="http://localhost") as client:
        yield client, slot


def test_search_serves_while_the_captioner_trains_and_captions_arrive_without_a_restart(slot_client, tiny_captioner_dir):
    client, slot = slot_client
    assert client.get("/search", params={"q": "a red circle", "k": 3}).status_code == 200
    caps = client.get("/capabilities").json()
    assert caps["captioner"] is False and caps["captions"]["state"] == "training"
    assert caps["captions"]["eta_s"] is None  # no step timed yet: no estimate rather than a guess

    refused = post_caption(client)
    assert refused.status_code == 503 and "not ready yet" in refused.json()["detail"]
    assert int(refused.headers["Retry-After"]) == RETRY_AFTER_UNKNOWN_S
    chat = post_chat(client, [{"role": "user", "content": "What is this?"}])
    assert chat.status_code == 503 and "Retry-After" in chat.headers

    slot.progress(150, 600, 420.0, "training the captioner: step 150 of 600, about 7 min left")
    caps = client.get("/capabilities").json()["captions"]
    assert (caps["state"], caps["step"], caps["total"], caps["eta_s"]) == ("training", 150, 600, 420.0)
    assert int(post_caption(client).headers["Retry-After"]) == 420  # when it is expected, not sooner

    model = visembed.load(tiny_captioner_dir)
    slot.ready(model)
    caps = client.get("/capabilities").json()
    assert caps["captioner"] is True and caps["captions"]["state"] == "ready"
    answered = post_caption(client)
    assert answered.status_code == 200
    assert answered.json()["caption"] == model.caption([SCENE])[0]
    assert post_chat(client, [{"role": "user", "content": "What is this?"}]).status_code == 200


def test_a_failed_training_is_a_404_with_its_reason(slot_client):
    client, slot = slot_client
    slot.failed("the captioner's training stopped (exit code 1)")
    caps = client.get("/capabilities").json()
    assert caps["captioner"] is False and caps["captions"]["state"] == "failed"
    response = post_caption(client)
    assert response.status_code == 404 and "exit code 1" in response.json()["detail"]
    assert client.get("/search", params={"q": "a circle"}).status_code == 200


def test_a_server_without_a_captioner_says_none(tiny_model_dir, tmp_path_factory):
    with TestClient(create_app(shapes_index(tiny_model_dir, tmp_path_factory)), base_url="http://localhost") as client:
        caps = client.get("/capabilities").json()
    assert caps["captioner"] is False and caps["captions"]["state"] == "none"


def test_retry_after_follows_the_eta_within_bounds():
    slot = CaptionerSlot()
    slot.progress(10, 600, 0.2, "")
    assert slot.retry_after_s() == 1
    slot.progress(10, 600, 10_000.0, "")
    assert slot.retry_after_s() == RETRY_AFTER_MAX_S


def test_progress_comes_from_the_metrics_file_and_the_eta_from_steps_seen(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    assert last_step(metrics) == 0  # not there yet
    metrics.write_text(json.dumps({"step": 20, "loss": 3.0}) + "\n" + json.dumps({"step": 40, "loss": 2.5}) + "\n{\"st")
    assert last_step(metrics) == 40  # a line being written is skipped
    clock = StepClock(total=100)
    assert clock.eta_s(20, now=0.0) is None  # one reading: no rate yet
    assert clock.eta_s(20, now=5.0) is None  # no step since
    assert clock.eta_s(40, now=10.0) == pytest.approx(30.0)  # 20 steps in 10 s, 60 left
