"""Few-shot classification methods as plain functions on cached features (numpy arrays in, a
`Head` out). None of them needs the training loop; fine-tuning (`finetune`) is a training task.

Labels are integer arrays (0..C-1, indices into the class list). Features are float32 (N, F):
`FeatureSet.select(kind)` or `select_features(image_features(...), kind)`.

Stable API:

    head = zeroshot_head(class_weights)                       # (C, D) text vectors -> Head
    head = fit_probe(X, y, n_classes, seed=0)                 # L2 logistic regression (scikit-learn
                                                              #   L-BFGS), C chosen on held-back shots
    head = fit_zs_probe(X, emb, y, class_weights)             # probe pulled towards zero-shot
    head = fit_zs_pseudo(X, emb, class_weights, widths=...)   # no labels: zero-shot + a probe on the
                                                              #   unlabelled images it is surest of
    head = fit_semi(X, y, X_pool, emb_pool, class_weights)    # the shots' probe + a quarter of zs-pseudo
                                                              #   on the unlabelled images (one linear part)
    head = tip_head(emb, y, class_weights)                    # Tip-Adapter (training-free cache)
    head = fit_tip_f(emb, y, class_weights, seed=0)           # Tip-Adapter-F (keys fine-tuned)
    scores = knn_scores(keys, key_labels, queries, n_classes, k=20)   # weighted kNN (DINO's)
    head.logits(feats) / head.probabilities(feats)            # feats: {"embedding", "pooled"} arrays

A `Head` is one formula (each method fills in some of its parts):

    logits = zs_scale * emb @ zs_weight.T                     # zero-shot prior (class text vectors)
           + norm(x) @ weight.T + bias                        # linear part on `features` (x)
           + alpha * exp(-beta * (1 - emb @ keys.T)) @ values # Tip-Adapter cache of the shots

where norm(x) is (x - mean) / scale (standardised, `block_norm` False) or, with `block_norm`, each
feature block of x ("embedding", "pooled", "layout", "middle", "late") centred on its mean and L2-normalised apart,
so that every block weighs the same whatever its width (SimpleShot's "CL2N", per block).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from visembed.classify.features import feature_parts, select_features

ZS_SCALE = 100.0  # CLIP's logit scale for zero-shot logits (and Tip-Adapter's)
PROBE_CS = (0.01, 0.1, 1.0)  # inverse regularisation strengths tried (standardised features)
PROBE_BLOCK_CS = (1.0, 3.0, 10.0)  # the same for block-normalised features (grid chosen on training concepts)
PROBE_NORMALIZE = "blocks"  # the probe's default: blocks (measured better: docs/classify.md) | standardize
PROBE_VAL_PER_CLASS = 4  # shots held back per class to choose C (at most; CoOp's lpclip)
TIP_ALPHA, TIP_BETA = 10.0, 5.5  # cache weight and sharpness where nothing is held back (1 shot a class)
TIP_GRID = ((1.0, 5.5), (3.0, 5.5), (10.0, 5.5), (30.0, 5.5), (10.0, 1.0), (30.0, 1.0))  # (alpha, beta) tried
ZS_PROBE_STRENGTH = 1e-4  # pull towards zero-shot (measured on emoji subgroups: docs/classify.md)
# zs-pseudo: pseudo-shots per class and the zero-shot log-probabilities' weight beside the probe's
# (chosen on the validation concepts of the training split: benchmarks/fewshot.py --pseudo-study)
PSEUDO_PER_CLASS, PSEUDO_ZS_WEIGHT = 4, 0.5
# semi: the zs-pseudo head's weight beside the shots' probe (chosen the same way: --semi-study)
SEMI_PSEUDO_WEIGHT = 0.25


@dataclass
class Head:
    """A classifier head on cached features; every array float32. See the module docstring."""

    n_classes: int
    features: str = "embedding"  # what the linear part reads: kinds joined by "+" (features.BASE_KINDS)
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
    block_norm: bool = False  # x centred (mean) and each feature block L2-normalised, instead of / scale
    info: dict = field(default_factory=dict)  # how it was fitted (chosen C, shots, ...)

    def logits(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        emb = feats["embedding"]
        out = np.zeros((len(emb), self.n_classes), np.float32)
        if self.zs_weight is not None:
            out += self.zs_scale * emb @ self.zs_weight.T
        if self.weight is not None:
            x = select_features(feats, self.features)
            if self.block_norm:
                x = normalize_blocks(x - self.mean, block_widths(feats, self.features))
            elif self.mean is not None:
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


def block_widths(feats: dict[str, np.ndarray], kind: str) -> list[int]:
    """Widths of the feature blocks `select_features(feats, kind)` joins, in order."""
    return [feats[part].shape[1] for part in feature_parts(kind)]


def normalize_blocks(x: np.ndarray, widths: list[int]) -> np.ndarray:
    """Each block of columns (of `widths`) L2-normalised per row (a zero block stays zero)."""
    out, start = [], 0
    for width in widths:
        block = x[:, start : start + width]
        out.append(block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12))
        start += width
    return np.concatenate(out, axis=1).astype(np.float32) if len(out) > 1 else out[0].astype(np.float32)


def zeroshot_head(class_weights: np.ndarray, *, zs_scale: float = ZS_SCALE) -> Head:
    """The zero-shot classifier: class text vectors (C, D), e.g. from `templates.class_vectors`;
    `zs_scale`: the logit scale (the model's learnt temperature gives calibrated probabilities)."""
    return Head(len(class_weights), zs_weight=np.asarray(class_weights, np.float32), zs_scale=float(zs_scale),
                info={"method": "zeroshot"})


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
              Cs=None, val_per_class: int = PROBE_VAL_PER_CLASS, seed: int = 0, normalize: str = PROBE_NORMALIZE,
              widths: list[int] | None = None, center: np.ndarray | None = None) -> Head:
    """A linear probe (CLIP's protocol): L2-regularised logistic regression, C chosen among `Cs` on up
    to `val_per_class` shots per class held back from the shots (never the test data), then refitted
    on all shots. With one shot per class there is nothing to hold back: the middle C is used. `x`
    holds the `features` kind of the shots; `widths` its blocks' widths (`block_widths`; None: one
    block). `normalize`: "blocks" (default: each block centred on the shots' mean, or on `center` where
    given, and L2-normalised, `Cs` default `PROBE_BLOCK_CS`) or "standardize" (per column, `Cs` default
    `PROBE_CS`)."""
    if normalize not in ("blocks", "standardize"):
        raise ValueError(f"normalize must be blocks or standardize, not {normalize!r}")
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int64)
    blocks = normalize == "blocks"
    Cs = tuple(Cs or (PROBE_BLOCK_CS if blocks else PROBE_CS))
    mean, scale = standardizer(x)
    if center is not None:
        if not blocks:
            raise ValueError("center goes with normalize='blocks'")
        mean = np.asarray(center, np.float32)
    if blocks:
        widths = list(widths or [x.shape[1]])
        if sum(widths) != x.shape[1]:
            raise ValueError(f"block widths {widths} do not add up to the {x.shape[1]} feature columns")
        scale = None
        xs = normalize_blocks(x - mean, widths)
    else:
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
    return Head(n_classes, features=features, weight=weight, bias=bias, mean=mean, scale=scale, block_norm=blocks,
                info={"method": "probe", "C": C, "normalize": normalize, "val_accuracy": scores})


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


def choose_tip(emb: np.ndarray, y: np.ndarray, class_weights: np.ndarray, *, zs_scale: float = ZS_SCALE,
               seed: int = 0) -> tuple[float, float, dict]:
    """(alpha, beta, accuracies) for Tip-Adapter chosen on up to 4 shots per class held back from the
    shots (Tip-Adapter searches them on its validation set); defaults where nothing can be held back."""
    fit, val = split_shots(np.asarray(y), PROBE_VAL_PER_CLASS, seed)
    if not len(val):
        return TIP_ALPHA, TIP_BETA, {}
    feats = {"embedding": np.asarray(emb, np.float32)[val]}
    scores = {}
    for alpha, beta in TIP_GRID:
        head = tip_head(emb[fit], np.asarray(y)[fit], class_weights, alpha=alpha, beta=beta, zs_scale=zs_scale)
        scores[f"{alpha:g},{beta:g}"] = float((head.logits(feats).argmax(1) == np.asarray(y)[val]).mean())
    best = max(scores, key=scores.get)
    alpha, beta = (float(v) for v in best.split(","))
    return alpha, beta, scores


def tip_head(emb: np.ndarray, y: np.ndarray, class_weights: np.ndarray, *, alpha: float | None = TIP_ALPHA,
             beta: float | None = TIP_BETA, zs_scale: float = ZS_SCALE, seed: int = 0) -> Head:
    """Tip-Adapter: zero-shot logits plus a cache whose keys are the shots' embeddings and values
    their one-hot labels; nothing is trained. `alpha`/`beta` None: chosen on held-back shots
    (`choose_tip`)."""
    searched = {}
    if alpha is None or beta is None:
        alpha, beta, searched = choose_tip(emb, y, class_weights, zs_scale=zs_scale, seed=seed)
    n_classes = len(class_weights)
    values = np.eye(n_classes, dtype=np.float32)[np.asarray(y, np.int64)]
    return Head(n_classes, zs_weight=np.asarray(class_weights, np.float32), zs_scale=float(zs_scale),
                keys=np.asarray(emb, np.float32), values=values, alpha=alpha, beta=beta,
                info={"method": "tip", "alpha": alpha, "beta": beta, "val_accuracy": searched})


def _torch_seeded(seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch, g


def fit_tip_f(emb: np.ndarray, y: np.ndarray, class_weights: np.ndarray, *, alpha: float | None = TIP_ALPHA,
              beta: float | None = TIP_BETA, epochs: int = 20, lr: float = 1e-3, batch_size: int = 256, seed: int = 0,
              zs_scale: float = ZS_SCALE) -> Head:
    """Tip-Adapter-F: the cache keys trained with cross-entropy on the shots (AdamW, cosine schedule,
    the authors' 20 epochs at lr 1e-3), the zero-shot weights fixed."""
    torch, g = _torch_seeded(seed)
    head = tip_head(emb, y, class_weights, alpha=alpha, beta=beta, zs_scale=zs_scale, seed=seed)
    alpha, beta = head.alpha, head.beta
    x = torch.from_numpy(np.asarray(emb, np.float32))
    target = torch.from_numpy(np.asarray(y, np.int64))
    keys = torch.nn.Parameter(x.clone())
    values = torch.from_numpy(head.values)
    zs = zs_scale * x @ torch.from_numpy(head.zs_weight).T  # (N, C): fixed
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
                 features: str = "embedding", strength: float = ZS_PROBE_STRENGTH, steps: int = 100, seed: int = 0,
                 zs_scale: float = ZS_SCALE) -> Head:
    """A probe that starts at the zero-shot head and is pulled towards it (cross-modal adaptation /
    CLAP style): logits = zero-shot logits + a linear residual on standardised `features` (divided
    by sqrt(width), so the pull means the same for any width), trained with cross-entropy + an L2
    penalty on the residual of weight `strength / shots per class`. At zero residual it is the
    zero-shot head; the penalty keeps it near there when shots are few, so it needs no validation
    split. Full-batch L-BFGS (torch); no bias (the zero-shot head has none to pull towards)."""
    import torch

    torch.manual_seed(seed)
    n_classes = len(class_weights)
    y = np.asarray(y, np.int64)
    x = np.asarray(x, np.float32)
    mean, scale = standardizer(x)
    scale = scale * np.float32(np.sqrt(x.shape[1]))
    xs = torch.from_numpy((x - mean) / scale)
    zs = torch.from_numpy(zs_scale * np.asarray(emb, np.float32) @ np.asarray(class_weights, np.float32).T)
    target = torch.from_numpy(y)
    shots = max(1.0, len(y) / max(1, len(np.unique(y))))
    lam = strength / shots
    weight = torch.zeros(n_classes, xs.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([weight], lr=1.0, max_iter=steps, history_size=10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(zs + xs @ weight.T, target) + lam * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return Head(n_classes, features=features, zs_weight=np.asarray(class_weights, np.float32),
                zs_scale=float(zs_scale), weight=weight.detach().numpy(), bias=np.zeros(n_classes, np.float32),
                mean=mean, scale=scale, info={"method": "zs-probe", "strength": strength, "penalty": lam})


def pseudo_shots(emb: np.ndarray, class_weights: np.ndarray,
                 per_class: int = PSEUDO_PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """(indices, class indices) of unlabelled images taken as shots: each image goes to its zero-shot
    class (the nearest class text vector), and each class keeps the `per_class` of its images most
    similar to its text vector. A class no image goes to takes the one image most similar to it, so
    every class has a shot. Labels are never read."""
    sims = np.asarray(emb, np.float32) @ np.asarray(class_weights, np.float32).T  # (N, C)
    nearest = sims.argmax(1)
    idx, labels = [], []
    for c in range(sims.shape[1]):
        mine = np.flatnonzero(nearest == c)
        mine = mine[np.argsort(-sims[mine, c], kind="stable")][:per_class] if len(mine) else sims[:, c].argmax()[None]
        idx += mine.tolist()
        labels += [c] * len(mine)
    return np.array(idx, np.int64), np.array(labels, np.int64)


def fit_zs_pseudo(x: np.ndarray, emb: np.ndarray, class_weights: np.ndarray, *, features: str = "embedding",
                  widths: list[int] | None = None, per_class: int = PSEUDO_PER_CLASS,
                  zs_weight: float = PSEUDO_ZS_WEIGHT, seed: int = 0, zs_scale: float = ZS_SCALE,
                  normalize: str = PROBE_NORMALIZE, center: np.ndarray | None = None) -> Head:
    """Zero-shot helped by unlabelled images, no label read (SuS-X style: a support set found by the
    class names): `pseudo_shots` picks the images the zero-shot head is surest of, a probe (`fit_probe`
    on the `features` x, of blocks `widths`) is fitted on them, and the head is that probe plus
    `zs_weight` times the zero-shot logits (log-probabilities add: the probe's and a flattened
    zero-shot's). x and emb: the unlabelled images' features and embeddings; `center`: as `fit_probe`'s."""
    if len(emb) == 0:
        raise ValueError("zs-pseudo needs unlabelled images (the data's images; their labels are not read)")
    idx, labels = pseudo_shots(emb, class_weights, per_class)
    head = fit_probe(np.asarray(x)[idx], labels, len(class_weights), features=features, seed=seed, widths=widths,
                     normalize=normalize, center=center)
    head.zs_weight = np.asarray(class_weights, np.float32)
    head.zs_scale = float(zs_weight * zs_scale)
    head.info = {"method": "zs-pseudo", "pool_images": int(len(emb)), "pseudo_shots": int(len(idx)),
                 "per_class": per_class, "zs_weight": zs_weight, "C": head.info["C"]}
    return head


def fit_semi(x: np.ndarray, y: np.ndarray, x_pool: np.ndarray, emb_pool: np.ndarray, class_weights: np.ndarray, *,
             features: str = "embedding", widths: list[int] | None = None, weight: float = SEMI_PSEUDO_WEIGHT,
             seed: int = 0, zs_scale: float = ZS_SCALE) -> Head:
    """Semi-supervised: the labelled shots' probe plus `weight` times the zs-pseudo head of the
    unlabelled pool (`x_pool`, `emb_pool`: its features and embeddings; its labels are never read).
    Both probes centre their blocks on the shots' mean, so their sum is one linear part and the
    result is an ordinary `Head` (block-normalised). x, y: the shots' features and class indices."""
    if len(emb_pool) == 0:
        raise ValueError("semi needs the data's unlabelled images beside the shots")
    head = fit_probe(np.asarray(x, np.float32), y, len(class_weights), features=features, seed=seed, widths=widths)
    pseudo = fit_zs_pseudo(x_pool, emb_pool, class_weights, features=features, widths=widths, seed=seed,
                           zs_scale=zs_scale, center=head.mean)
    head.weight = head.weight + weight * pseudo.weight
    head.bias = head.bias + weight * pseudo.bias
    head.zs_weight = pseudo.zs_weight
    head.zs_scale = float(weight * pseudo.zs_scale)
    head.info = {"method": "semi", "C": head.info["C"], "pseudo_C": pseudo.info["C"], "pool_images": int(len(emb_pool)),
                 "pseudo_shots": pseudo.info["pseudo_shots"], "pseudo_weight": weight}
    return head
