"""Request and response bodies of the HTTP API (they are what /openapi.json documents)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

MAX_K = 100
MAX_QUERY_CHARS = 500
MAX_IDS = 500
MAX_CHAT_MESSAGES = 64  # turns in one /chat request; the oldest are dropped anyway to fit the model
MAX_CHAT_CHARS = 20_000  # the `messages` form field, as JSON text


class Health(BaseModel):
    status: str = "ok"
    items: int = Field(description="live items in the index")


class Result(BaseModel):
    id: str
    score: float = Field(description="cosine similarity to the query (or to the preference vector)")
    caption: str
    image_url: str
    thumbnail_url: str
    because: str | None = Field(None, description="recommendations: the liked item this result is closest to")
    because_score: float | None = None


class SearchResponse(BaseModel):
    results: list[Result]


class RecommendRequest(BaseModel):
    liked: list[str] = Field(min_length=1, max_length=MAX_IDS, description="ids of liked items")
    disliked: list[str] = Field(default_factory=list, max_length=MAX_IDS, description="ids of disliked items")
    k: int = Field(12, ge=1, le=MAX_K)
    mmr_lambda: float = Field(0.7, ge=0.0, le=1.0, description="1 = pure relevance; lower = more varied results")


class CaptionsStatus(BaseModel):
    state: str = Field(description='"ready" (POST /caption and /chat answer), "training" (a captioner is being '
                                   'trained for this server: they answer 503 with Retry-After until it is loaded), '
                                   '"failed" (its training stopped; no captions) or "none" (no captioner)')
    step: int | None = Field(None, description="training: steps done so far (none before the first)")
    total: int | None = Field(None, description="training: steps planned")
    eta_s: float | None = Field(None, description="training: estimated seconds until captions arrive, from the "
                                                  "steps timed so far (none while there is no estimate)")
    detail: str = Field("", description="a sentence for people")


class Capabilities(BaseModel):
    captioner: bool = Field(description="a captioner is loaded: POST /caption and POST /chat answer")
    classifier: bool = Field(False, description="a classifier is loaded: POST /classify answers")
    captions: CaptionsStatus = Field(default_factory=lambda: CaptionsStatus(state="none"),
                                     description="whether captions are available, on their way, or not")


class CaptionResponse(BaseModel):
    caption: str = Field(description="alt text: one short sentence, hedged (\"May show ...\") when the model is "
                                     "unsure; with `detail`, a longer description")


class ChatResponse(BaseModel):
    reply: str = Field(description="the assistant's answer to the last user message")
    note: str | None = Field(None, description="present when the oldest turns were left out to fit the model")


class Problem(BaseModel):
    detail: str | list[dict[str, Any]] = Field(description="what was wrong: a sentence, or FastAPI's list of field errors")


def problems(*codes: int) -> dict:
    """OpenAPI `responses` entries for the error codes an endpoint can answer with."""
    return {code: {"model": Problem} for code in codes}
