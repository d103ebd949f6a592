"""Evaluation: pure functions on embeddings (retrieval, zero-shot) and a runner for model folders."""

from visembed.eval.retrieval import retrieval_metrics
from visembed.eval.zeroshot import zeroshot_accuracy

__all__ = ["retrieval_metrics", "zeroshot_accuracy"]
