"""Labels for an uploaded image, when the service has a classifier (`visembed serve INDEX
--classifier DIR`): `POST /classify` (multipart `file`, optional form `k`) answers the top-k
classes with probabilities; `GET /classifier` says which classifier is loaded (the web page shows
the labels of an uploaded image beside its search results when it answers). Uploads are decoded
under the same limits as image search (`uploaded_image`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from pydantic import BaseModel, Field

from visembed.classify.folder import Classifier
from visembed.serve.routes import uploaded_image
from visembed.serve.schemas import problems
from visembed.serve.strict_json import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute)
MAX_LABELS = 100
NO_CLASSIFIER = ("this server has no classifier: start it with `visembed serve INDEX --classifier DIR` (DIR: a "
                 "folder made by `visembed classify fit`)")


class Label(BaseModel):
    label: str = Field(description="class name")
    probability: float = Field(description="the classifier's probability of this class, in [0, 1]")


class ClassifyResponse(BaseModel):
    labels: list[Label] = Field(description="the top-k classes, most probable first")


class ClassifierInfo(BaseModel):
    method: str = Field(description="how the classifier was fitted (zeroshot, zs-pseudo, probe, zs-probe, tip, tip-f, finetune)")
    classes: list[str] = Field(description="the classes it knows")


def get_classifier(request: Request) -> Classifier:
    classifier = getattr(request.app.state, "classifier", None)
    if classifier is None:
        raise HTTPException(404, NO_CLASSIFIER)
    return classifier


ClassifierDep = Annotated[Classifier, Depends(get_classifier)]


@router.get("/classifier", response_model=ClassifierInfo, tags=["classify"], responses=problems(404))
def classifier_info(classifier: ClassifierDep) -> ClassifierInfo:
    """The loaded classifier's method and classes (404 when the server has none)."""
    return ClassifierInfo(method=classifier.method, classes=classifier.classes)


@router.post("/classify", response_model=ClassifyResponse, tags=["classify"],
             responses=problems(400, 404, 413, 415, 422, 503))
def classify(request: Request, classifier: ClassifierDep,
             file: Annotated[UploadFile, File(description="an image")],
             k: Annotated[int, Form(ge=1, le=MAX_LABELS, description="number of labels")] = 5) -> ClassifyResponse:
    """The top-k labels of an uploaded image with their probabilities."""
    image = uploaded_image(request, file, classifier.image_size)
    found, = classifier.predict([image], k=k)
    return ClassifyResponse(labels=[Label(**item) for item in found])


def load_classifier(folder) -> Classifier:
    """The classifier folder to serve (a ValueError with a sentence for anything else)."""
    return Classifier.from_folder(folder)
