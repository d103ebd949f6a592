"""Few-shot classification methods as plain functions on cached features (numpy arrays in, a
`Head` out). None of them needs the training loop; fine-tuning (`finetune`) is a training task.

Labels are integer arrays (0..C-1, indices into the class list). Features are float32 (N, F):
`FeatureSet.select(kind)` or `select_features(image_features(...), kind)`.

Stable API:

    head = zeroshot_head(class_weights)                       # (C, D) text vectors -> Head
    head = fit_probe(X, y, n_classes, seed=0)                 # L2 logistic regression (scikit-learn
                                                              #   L-BFGS), C chosen on held-back shots
    head = fit_zs_probe(X, emb, y, class_weights)             # probe pulled towards zero-shot
    head = tip_head(emb, y, class_weights)                    # Tip-Adapter (training-free cache)
    head = fit_tip_f(emb, y, class_weights, seed=0)           # Tip-Adapter-F (keys fine-tuned)
    scores = knn_scores(keys, key_labels, queries, n_classes, k=20)   # weighted kNN (DINO's)
    head.logits(feats) / head.probabilities(feats)            # feats: {"embedding", "pooled"} arrays

A `Head` is one formula (each method fills in some of its parts):

    logits = zs_scale * emb @ zs_weight.T                     # zero-shot prior (class text vectors)
           + ((x - mean) / scale) @ weight.T + bias           # linear part on `features` (x)
           + alpha * exp(-beta * (1 - emb @ keys.T)) @ values # Tip-Adapter cache of the shots
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from visembed.classify.features import select_features

ZS_SCALE = 100.0  # CLIP's logit scale for zero-shot logits (and Tip-Adapter's)
PROBE_CS = (0.01, 0.1, 1.0)  # inverse regularisation strengths tried (standardised features)
PROBE_VAL_PER_CLASS = 4  # shots held back per class to choose C (at most; CoOp's lpclip)
TIP_ALPHA, TIP_BETA = 1.0, 5.5  # Tip-Adapter's defaults (its ImageNet config)


@dataclass
class Head:
    """A classifier head on cached features; every array float32. See the module docstring."""

    n_classes: int
    features: str = "embedding"  # what the linear part reads: embedding | pooled | both
    zs_weight: np.ndarray | None = None  # (C, D) L2-normalised class text vectors
    zs_scale: float = ZS_SCALE
    weight: np.ndarray | None = None  # (C, F)
    bias: np.ndarray | None = None  # (C,)
    mean: np.ndarray | None = None  # (F,) standardisation of x
    scale: np.ndarray | None = None  # (F,)
    keys: np.ndarray | None = None  # (K, D) L2-normalised shot embeddings
    values: np.ndarray | None = None  # (K, C) one-hot labels of the keys
    alpha: float = TIP_ALPHA
    beta: float = TIP_BETA
    info: dict = field(default_factory=dict)  # how it was fitted (chosen C, shots, ...)

    def logits(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        emb = feats["embedding"]
        out = np.zeros((len(emb), self.n_classes), np.float32)
        if self.zs_weight is not None:
            out += self.zs_scale * emb @ self.zs_weight.T
        if self.weight is not None:
            x = select_features(feats, self.features)
            if self.mean is not None:
                x = (x - self.mean) / self.scale
            out += x @ self.weight.T + self.bias
        if self.keys is not None:
            affinity = emb @ self.keys.T  # (N, K)
            out += self.alpha * np.exp(-self.beta * (1.0 - affinity)) @ self.values
        return out

    def probabilities(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        logits = self.logits(feats)
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)


def standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of the columns of x; constant columns get scale 1 (scikit-learn's rule)."""
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(x)
    return sc.mean_.astype(np.float32), sc.scale_.astype(np.float32)


def zeroshot_head(class_weights: np.ndarray) -> Head:
    """The zero-shot classifier: class text vectors (C, D), e.g. from `eval.zeroshot.class_embeddings`."""
    return Head(len(class_weights), zs_weight=np.asarray(class_weights, np.float32), info={"method": "zeroshot"})


def split_shots(y: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, validation indices): up to `per_class` of each class held back, always leaving
    at least one to fit on (a class of one shot is not validated)."""
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = min(per_class, len(idx) // 2)
        val += list(idx[:n_val])
        fit += list(idx[n_val:])
    return np.array(sorted(fit), np.int64), np.array(sorted(val), np.int64)


def _logistic(x: np.ndarray, y: np.ndarray, n_classes: int, C: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight (C, F), bias (C,)) of an L2 logistic regression (scikit-learn, L-BFGS), with rows for
    classes absent from y (their bias very low: never predicted over a seen class)."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    classes = np.unique(y)
    weight = np.zeros((n_classes, x.shape[1]), np.float32)
    bias = np.full(n_classes, -1e4, np.float32)
    if len(classes) == 1:
        bias[classes[0]] = 0.0
        return weight, bias
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "more classes than half the samples": expected at 1 shot
        clf = LogisticRegression(C=C, max_iter=300, tol=1e-3, random_state=seed).fit(x, y)
    weight[clf.classes_] = clf.coef_ if len(classes) > 2 else np.stack([-clf.coef_[0], clf.coef_[0]]) / 2
    bias[clf.classes_] = clf.intercept_ if len(classes) > 2 else np.array([-clf.intercept_[0], clf.intercept_[0]]) / 2
    return weight, bias


def fit_probe(x: np.ndarray, y: np.ndarray, n_classes: int, *, features: str = "embedding", C: float | None = None,
              Cs=PROBE_CS, val_per_class: int = PROBE_VAL_PER_CLASS, seed: int = 0) -> Head:
    """A linear probe (CLIP's protocol): L2-regularised logistic regression on standardised features,
    C chosen among `Cs` on up to `val_per_class` shots per class held back from the shots (never the
    test data), then refitted on all shots. With one shot per class there is nothing to hold back:
    the middle C is used. `x` holds the `features` kind of the shots."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int64)
    mean, scale = standardizer(x)
    xs = (x - mean) / scale
    scores = {}
    if C is None:
        fit, val = split_shots(y, val_per_class, seed)
        if len(val) and len(np.unique(y[fit])) > 1:
            for c in Cs:
                w, b = _logistic(xs[fit], y[fit], n_classes, c, seed)
                scores[c] = float(((xs[val] @ w.T + b).argmax(1) == y[val]).mean())
            C = max(scores, key=lambda c: (scores[c], -abs(np.log10(c) - np.log10(Cs[len(Cs) // 2]))))
        else:
            C = Cs[len(Cs) // 2]
    weight, bias = _logistic(xs, y, n_classes, C, seed)
    return Head(n_classes, features=features, weight=weight, bias=bias, mean=mean, scale=scale,
                info={"method": "probe", "C": C, "val_accuracy": scores})


def knn_scores(keys: np.ndarray, key_labels: np.ndarray, queries: np.ndarray, n_classes: int, *, k: int = 20,
               temperature: float = 0.07) -> np.ndarray:
    """(N, C) class scores of a weighted k-nearest-neighbour vote (DINO's: each of the k most cosine-
    similar keys votes for its class with weight exp(similarity / temperature)). Rows of keys and
    queries are L2-normalised here."""
    keys = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
    queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    k = min(k, len(keys))
    sims = queries @ keys.T  # (N, K)
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (N, k)
    top_sims = np.take_along_axis(sims, top, axis=1)
    votes = np.exp(top_sims / temperature)
    scores = np.zeros((len(queries), n_classes), np.float32)
    np.add.at(scores, (np.repeat(np.arange(len(queries)), k), key_labels[top].ravel()), votes.ravel())
    return scores


def knn_predict(keys, key_labels, queries, n_classes: int, *, k: int = 20, temperature: float = 0.07) -> np.ndarray:
    """Predicted class per query (`knn_scores`' best)."""
    return knn_scores(keys, key_labels, queries, n_classes, k=k, temperature=temperature).argmax(1)


def tip_head(emb: np.ndarray, y: np.ndarray, class_weights: np.ndarray, *, alpha: float = TIP_ALPHA,
             beta: float = TIP_BETA) -> Head:
    """Tip-Adapter: zero-shot logits plus a cache whose keys are the shots' embeddings and values
    their one-hot labels; nothing is trained."""
    n_classes = len(class_weights)
    values = np.eye(n_classes, dtype=np.float32)[np.asarray(y, np.int64)]
    return Head(n_classes, zs_weight=np.asarray(class_weights, np.float32), keys=np.asarray(emb, np.float32),
                values=values, alpha=alpha, beta=beta, info={"method": "tip", "alpha": alpha, "beta": beta})


def _torch_seeded(seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch, g


def fit_tip_f(emb: np.ndarray, y: np.ndarray, class_weights: np.ndarray, *, alpha: float = TIP_ALPHA,
              beta: float = TIP_BETA, epochs: int = 20, lr: float = 1e-3, batch_size: int = 256, seed: int = 0) -> Head:
    """Tip-Adapter-F: the cache keys trained with cross-entropy on the shots (AdamW, cosine schedule,
    the authors' 20 epochs at lr 1e-3), the zero-shot weights fixed."""
    torch, g = _torch_seeded(seed)
    head = tip_head(emb, y, class_weights, alpha=alpha, beta=beta)
    x = torch.from_numpy(np.asarray(emb, np.float32))
    target = torch.from_numpy(np.asarray(y, np.int64))
    keys = torch.nn.Parameter(x.clone())
    values = torch.from_numpy(head.values)
    zs = ZS_SCALE * x @ torch.from_numpy(head.zs_weight).T  # (N, C): fixed
    opt = torch.optim.AdamW([keys], lr=lr, eps=1e-4)
    steps = epochs * max(1, -(-len(x) // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch_size):
            i = order[start : start + batch_size]
            affinity = x[i] @ torch.nn.functional.normalize(keys, dim=-1).T
            logits = zs[i] + alpha * torch.exp(-beta * (1 - affinity)) @ values
            loss = torch.nn.functional.cross_entropy(logits, target[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    head.keys = torch.nn.functional.normalize(keys.detach(), dim=-1).numpy()
    head.info = {"method": "tip-f", "alpha": alpha, "beta": beta, "epochs": epochs}
    return head


def fit_zs_probe(x: np.ndarray, emb: np.ndarray, y: np.ndarray, class_weights: np.ndarray, *,
                 features: str = "embedding", strength: float = 1.0, steps: int = 100, seed: int = 0) -> Head:
    """A probe that starts at the zero-shot head and is pulled towards it (cross-modal adaptation /
    CLAP style): logits = zero-shot logits + a linear residual on standardised `features`, trained
    with cross-entropy + an L2 penalty on the residual of weight `strength / shots per class`. At
    zero residual it is the zero-shot head; the penalty keeps it there when shots are few, so it
    needs no validation split. Full-batch L-BFGS (torch)."""
    torch, _ = _torch_seeded(seed)
    n_classes = len(class_weights)
    y = np.asarray(y, np.int64)
    mean, scale = standardizer(np.asarray(x, np.float32))
    xs = torch.from_numpy((np.asarray(x, np.float32) - mean) / scale)
    zs = torch.from_numpy(ZS_SCALE * np.asarray(emb, np.float32) @ np.asarray(class_weights, np.float32).T)
    target = torch.from_numpy(y)
    shots = max(1.0, len(y) / max(1, len(np.unique(y))))
    lam = strength / shots
    weight = torch.zeros(n_classes, xs.shape[1], requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = zs + xs @ weight.T + bias
        loss = torch.nn.functional.cross_entropy(logits, target) + lam * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return Head(n_classes, features=features, zs_weight=np.asarray(class_weights, np.float32),
                weight=weight.detach().numpy(), bias=bias.detach().numpy(), mean=mean, scale=scale,
                info={"method": "zs-probe", "strength": strength, "penalty": lam})
