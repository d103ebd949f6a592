"""Captions and image chat over HTTP, when the service has a captioner (`--captioner DIR`, or an
index built with one): `POST /caption` writes alt text for an uploaded image, `POST /chat` answers
the last message of a dialogue about it. The service keeps no dialogue: each request carries the
image and the whole history.

Uploads are decoded as for search (`uploaded_image`: the same size, pixel and memory limits), and
the messages checked, before a request queues for generation (`GenerationSlots`: one at a time, a
short bounded queue, 503 beyond it). A captioner still training for this server (`CaptionerSlot`,
as `visembed demo` serves one) is answered 503 with Retry-After until it arrives.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile

from visembed.models.inference import CaptionerModel, chat_turns
from visembed.serve.routes import uploaded_image
from visembed.serve.schemas import (MAX_CHAT_CHARS, MAX_CHAT_MESSAGES, Capabilities, CaptionResponse, CaptionsStatus,
                                    ChatResponse, problems)
from visembed.serve.strict_json import StrictJSONRoute, strict_loads

router = APIRouter(route_class=StrictJSONRoute)

NO_CAPTIONER = ("this server has no captioner: start it with `visembed serve INDEX --captioner DIR` (DIR: a folder "
                "made by `visembed train-captioner`), or serve an index built with a captioner")


def get_captioner(request: Request) -> CaptionerModel:
    """The loaded captioner; while one is training for this server (`CaptionerSlot`), 503 with
    Retry-After; after its training failed, or with none at all, 404 saying so."""
    captioner = current_captioner(request.app)
    if captioner is not None:
        return captioner
    slot = request.app.state.captioner_slot
    if slot is not None:
        status = slot.status()
        if status.state == "training":
            raise HTTPException(503, f"captions are not ready yet: {status.detail}",
                                headers={"Retry-After": str(slot.retry_after_s())})
        if status.state == "failed":
            raise HTTPException(404, f"this server has no captioner: {status.detail}")
    raise HTTPException(404, NO_CAPTIONER)


def current_captioner(app) -> CaptionerModel | None:
    """The captioner loaded at start, else the one a `CaptionerSlot` has handed over since."""
    if app.state.captioner is None and app.state.captioner_slot is not None:
        app.state.captioner = app.state.captioner_slot.model  # None until it is ready
    return app.state.captioner


def captions_status(app) -> CaptionsStatus:
    if current_captioner(app) is not None:
        return CaptionsStatus(state="ready", detail="POST /caption and POST /chat answer")
    slot = app.state.captioner_slot
    if slot is None:
        return CaptionsStatus(state="none", detail="this server has no captioner")
    status = slot.status()
    eta = None if status.eta_s is None else round(status.eta_s, 1)
    return CaptionsStatus(state=status.state, step=status.step, total=status.total, eta_s=eta, detail=status.detail)


CaptionerDep = Annotated[CaptionerModel, Depends(get_captioner)]
Upload = Annotated[UploadFile, File(description="an image")]


@router.get("/capabilities", response_model=Capabilities, tags=["service"])
def capabilities(request: Request) -> Capabilities:
    """What this server can do beyond search (the web page shows its caption and chat parts by it)."""
    captions = captions_status(request.app)
    return Capabilities(captioner=captions.state == "ready", classifier=request.app.state.classifier is not None,
                        captions=captions)


@router.post("/caption", response_model=CaptionResponse, tags=["captions"],
             responses=problems(400, 404, 413, 415, 422, 503))
def caption(request: Request, captioner: CaptionerDep, file: Upload,
            language: Annotated[Literal["en", "zh"], Form(description="language of the caption")] = "en",
            detail: Annotated[bool, Form(description="a longer description instead of one-sentence alt text")] = False,
            ) -> CaptionResponse:
    """Alt text for an image. 503 with `Retry-After` when the server is busy decoding or writing."""
    image = uploaded_image(request, file, captioner.image_size)
    with request.app.state.generation.turn():
        text, = captioner.caption([image], language=language, detail=detail)
    return CaptionResponse(caption=text)


@router.post("/chat", response_model=ChatResponse, response_model_exclude_none=True, tags=["captions"],
             responses=problems(400, 404, 413, 415, 422, 503))
def chat(request: Request, captioner: CaptionerDep, file: Upload,
         messages: Annotated[str, Form(max_length=MAX_CHAT_CHARS, description=(
             'the dialogue so far as a JSON list: [{"role": "user" | "assistant", "content": str}, ...], '
             "alternating, starting and ending with the user's"))],
         language: Annotated[Optional[Literal["en", "zh"]], Form(
             description="language of the reply (default: that of the first message)")] = None,
         ) -> ChatResponse:
    """The assistant's reply to the last message, about the image; `note` says when the oldest turns
    were left out to fit the model. 503 with `Retry-After` when the server is busy."""
    dialogue = checked_messages(messages)  # before the upload is decoded: the cheap check first
    image = uploaded_image(request, file, captioner.image_size)
    with request.app.state.generation.turn():
        reply, note = captioner.reply(image, dialogue, language=language)
    return ChatResponse(reply=reply, note=note)


def checked_messages(text: str) -> list[dict]:
    """The `messages` form field -> the list of messages, or HTTPException 422 saying what is wrong."""
    try:
        messages = strict_loads(text)
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"messages is not valid JSON ({exc.msg}); send a list of "
                                 '{"role": "user" | "assistant", "content": str}') from None
    if isinstance(messages, list) and len(messages) > MAX_CHAT_MESSAGES:
        raise HTTPException(422, f"at most {MAX_CHAT_MESSAGES} messages, got {len(messages)}")
    try:
        chat_turns(messages)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return messages


def find_captioner(searcher, captioner_dir=None) -> CaptionerModel | None:
    """The captioner to serve: the one in `captioner_dir` when given (a dual encoder there is a
    ValueError), else the index's own model when it is a captioner, else None."""
    if captioner_dir is not None:
        import visembed

        model = visembed.load(captioner_dir)
        if not isinstance(model, CaptionerModel):
            raise ValueError(f"{captioner_dir} holds a dual encoder, not a captioner "
                             "(train one on it with `visembed train-captioner`)")
        return model
    model = getattr(searcher, "model", None)
    return model if isinstance(model, CaptionerModel) else None
