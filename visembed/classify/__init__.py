"""Classifiers from class names and a few labelled images (issue 19).

The cached-feature core (stable; other features build on it):

    features.py   dataset_features / image_features: embed a dataset's images once, cached per
                  model + data + split (`FeatureSet`: ids, labels, embedding, pooled)
    methods.py    zero-shot, zs-pseudo, linear probe, semi, zs-probe, Tip-Adapter(-F), kNN as plain functions on
                  (features, integer labels) arrays, returning a `Head`

On top of it: shot sampling and the few-shot protocol, the classifier folder, metrics. Fine-tuning
(LP-FT + WiSE-FT) is a training task (`visembed.train.tasks.classification`). This package sits at
the eval layer: it imports data and models, never train or anything above.
"""

from visembed.classify.features import FEATURE_KINDS, FeatureSet, dataset_features, image_features, select_features
from visembed.classify.methods import (
    Head,
    fit_probe,
    fit_semi,
    fit_tip_f,
    fit_zs_probe,
    fit_zs_pseudo,
    knn_predict,
    knn_scores,
    pseudo_shots,
    tip_head,
    zeroshot_head,
)

__all__ = ["FEATURE_KINDS", "FeatureSet", "Head", "dataset_features", "fit_probe", "fit_semi", "fit_tip_f", "fit_zs_probe",
           "fit_zs_pseudo", "image_features", "knn_predict", "knn_scores", "pseudo_shots", "select_features",
           "tip_head", "zeroshot_head"]
