"""Request and response bodies of the HTTP API (pydantic models; they also make the OpenAPI description).

Unknown fields are refused (``extra="forbid"``) so a misspelt field is an error, not a silent default.
Strings are strict: a number where a text belongs is a 422, not a coerced "3".
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextEmbedRequest(_Request):
    texts: list[StrictStr] = Field(description="texts to embed (at most the service's max_batch)")


class ImageEmbedRequest(_Request):
    images: list[StrictStr] = Field(default_factory=list, description="base64 images (or data: URLs)")
    urls: list[StrictStr] = Field(default_factory=list, description="http(s) image URLs; only when the service "
                                                                     "runs with --allow-url-fetch")


class SearchRequest(_Request):
    """Exactly one query: ``text``, ``image`` (base64), ``url``, or ``row`` (an indexed image)."""

    text: StrictStr | None = None
    image: StrictStr | None = None
    url: StrictStr | None = None
    row: StrictInt | None = Field(default=None, description="find images similar to this row of the index")
    k: StrictInt = Field(default=10, description="number of results (1..max_k)")


class ClassifyRequest(_Request):
    """One image (``image`` base64 or ``url``) and the candidate labels."""

    image: StrictStr | None = None
    url: StrictStr | None = None
    labels: list[StrictStr]
    templates: list[StrictStr] | None = Field(default=None, description="prompt templates with {} for the "
                                                                         "label; default ['a photo of a {}.']")


class EmbedResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]] = Field(description="one unit vector per input, in input order")


class Hit(BaseModel):
    rank: int
    row: int = Field(description="row of the index; /thumbs/{row} serves its thumbnail")
    id: str
    score: float = Field(description="cosine similarity")
    thumbnail: str | None


class SearchResponse(BaseModel):
    results: list[Hit]
    took_ms: float


class LabelScore(BaseModel):
    label: str
    probability: float = Field(description="softmax over the labels of exp(logit_scale) · cosine; for a SigLIP "
                                           "model, sigmoid(exp(logit_scale) · cosine + logit_bias) per label")
    cosine: float


class ClassifyResponse(BaseModel):
    labels: list[LabelScore] = Field(description="sorted, most probable first")
    took_ms: float


class Health(BaseModel):
    status: str
    model: str
    dim: int
    image_size: int
    index_size: int | None
    index_kind: str | None
    in_flight: int
    capacity: int
    auth: bool
    url_fetch: bool


class ErrorBody(BaseModel):
    error: str


__all__ = [
    "ClassifyRequest", "ClassifyResponse", "EmbedResponse", "ErrorBody", "Health", "Hit", "ImageEmbedRequest",
    "LabelScore", "SearchRequest", "SearchResponse", "TextEmbedRequest",
]
