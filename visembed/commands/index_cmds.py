"""`visembed index build`, `add`, `delete`, `search`, `recommend`, `serve`: the index and the service over it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from visembed.commands.errors import friendly_errors, text_argument
from visembed.commands.options import BACKEND_OPTION, QUANTIZE_OPTION


def register(app: typer.Typer) -> None:
    index_app = typer.Typer(help="Build and change search indexes.", no_args_is_help=True)
    index_app.command("build")(build)
    index_app.command("add")(add)
    index_app.command("delete")(delete)
    app.add_typer(index_app, name="index")
    app.command("search")(search)
    app.command("recommend", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(recommend)
    app.command("serve")(serve)


def build(
    model: Path = typer.Argument(..., help="Model (or run) folder that embeds the images; hf:PATH or openclip:PATH."),
    data: str = typer.Option(..., "--data", help="Data spec: builtin:emoji, a manifest, a folder, WebDataset shards."),
    out: Path = typer.Option(..., "--out", help="Index folder to write; rerun to resume or refresh (deletions are kept: "
                                                "undo them with --forget-deletions, or use a new --out)."),
    split: str = typer.Option("all", "--split", help="Dataset split: every image unless told otherwise."),
    language: str = typer.Option("en", "--language", help="Caption language for multilingual data."),
    store: str = typer.Option("faiss", "--store", help="Where the vectors go: faiss (files in --out), milvus:FILE.db "
                              "(Milvus Lite, no server) or milvus://HOST:PORT, milvus://HOST:PORT/COLLECTION (a Milvus server; also "
                              "http(s)://). --out keeps the shards and thumbnails either way."),
    kind: str = typer.Option("auto", "--kind", help="auto, flat (exact), hnsw or ivfpq; Milvus: auto, flat, hnsw, "
                             "ivf_flat or ivf_sq8."),
    exact_below: int = typer.Option(20_000, "--exact-below", help="auto: exact search below this many items."),
    large_kind: str = typer.Option("hnsw", "--large-kind", help="auto: hnsw or ivfpq above the threshold "
                                   "(Milvus: hnsw, ivf_flat or ivf_sq8; auto turns to ivf_sq8 past 50M items)."),
    milvus_timeout: float = typer.Option(10.0, "--milvus-timeout", min=0.1, help="Seconds to reach a Milvus server."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
    shard_size: int = typer.Option(1000, "--shard-size", min=1, help="Images per embedding shard (the unit of resumption)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    model_backend: str = BACKEND_OPTION,
    model_quantize: Optional[str] = QUANTIZE_OPTION,
    forget_deletions: bool = typer.Option(False, "--forget-deletions", help="Bring back items removed with `index delete`."),
) -> None:
    """Embed every image of a dataset (sharded, resumable) and build a FAISS index (or fill a Milvus
    collection) over it. Under `torchrun --nproc_per_node N -m visembed.cli index build ...` each
    process embeds every N-th shard and rank 0 builds the index."""
    from visembed import distributed
    from visembed.index.backends import POINTER
    from visembed.index.build import build_index
    from visembed.interop.cache import resolve_model

    with friendly_errors():
        backend, settings = _store_settings(store, kind, exact_below, large_kind, milvus_timeout)
        model = resolve_model(model)
        rank = distributed.init_distributed()[0]  # a plain single process outside torchrun
        try:
            build_index(model, data, out, split=split, progress=not quiet, settings=settings, language=language,
                        shard_size=shard_size, batch_size=batch_size, keep_deletions=not forget_deletions,
                        backend=backend, model_backend=model_backend, model_quantize=model_quantize)
        finally:
            distributed.cleanup()
        if rank != 0:
            return  # rank 0 reports
        manifest = json.loads((out / ("index.json" if backend == "faiss" else POINTER)).read_text(encoding="utf-8"))
    skipped = ", ".join(f"{reason}={n}" for reason, n in manifest["skipped"].items()) or "none"
    where = "" if backend == "faiss" else f" in Milvus {manifest['uri']} (collection {manifest['collection']})"
    typer.echo(f"indexed {manifest['live']} items into {out} ({manifest['kind']} index{where}; skipped: {skipped})")
    _say_unserved(manifest.get("unserved_files") or 0)
    if backend == "milvus" and settings.is_lite and manifest["live"] > LITE_COMFORT:
        typer.echo(f"note: Milvus Lite scans every row in Python on each search (~1.7 s a query at 100k items, "
                   f"docs/scale.md); for {manifest['live']} items use FAISS or a Milvus server (--store milvus://HOST:PORT)")


LITE_COMFORT = 20_000  # items above which Milvus Lite's per-query scan is slower than a user waits


def _store_settings(store: str, kind: str, exact_below: int, large_kind: str, timeout: float):
    """`--store` and the index knobs -> (backend name, that backend's settings); ValueError when they do not fit."""
    if store == "faiss":
        from visembed.index.backends.faiss_kinds import IndexSettings

        settings = IndexSettings(kind=kind, exact_below=exact_below, large_kind=large_kind)
        settings.resolve_kind(0), settings.resolve_kind(exact_below)  # fail early on a bad kind
        return "faiss", settings
    from visembed.index.backends.milvus_store import KINDS, MilvusSettings

    if large_kind not in ("hnsw", "ivf_flat", "ivf_sq8"):
        raise ValueError(f"--large-kind {large_kind!r} with Milvus: choose hnsw, ivf_flat or ivf_sq8 (no PQ in Milvus Lite)")
    settings = MilvusSettings.from_spec(store, kind=kind, exact_below=exact_below, large_kind=large_kind,
                                        timeout=timeout)
    if settings.kind != "auto" and settings.kind not in KINDS:
        raise ValueError(f"--kind {kind!r} with Milvus: choose auto, {', '.join(KINDS)}")
    return "milvus", settings


def add(
    index_dir: Path = typer.Argument(..., help="Index folder to add to."),
    data: str = typer.Option(..., "--data", help="Data spec of the new images (ids already in the index are skipped)."),
    split: str = typer.Option("all", "--split", help="Dataset split: every image unless told otherwise."),
    model: Path = typer.Option(None, "--model", help="Model folder (default: the one recorded in the index; same weights only)."),
    language: str = typer.Option("en", "--language", help="Caption language for multilingual data."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
    shard_size: int = typer.Option(1000, "--shard-size", min=1, help="Images per embedding shard."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    model_backend: str = BACKEND_OPTION,
    model_quantize: Optional[str] = QUANTIZE_OPTION,
) -> None:
    """Embed new images with the index's model and append them to the index (no rebuild)."""
    from visembed.index.build import add_to_index

    with friendly_errors():
        report = add_to_index(index_dir, data, split=split, model_dir=model, language=language,
                              shard_size=shard_size, batch_size=batch_size, progress=not quiet,
                              model_backend=model_backend, model_quantize=model_quantize)
    skipped = ", ".join(f"{reason}={n}" for reason, n in report.skipped.as_dict().items()) or "none"
    deleted = f", {report.still_deleted} deleted earlier and left out" if report.still_deleted else ""
    typer.echo(f"added {report.added} items to {index_dir} ({report.already_indexed} already there{deleted}; "
               f"skipped: {skipped}); {report.total} items in total")
    _say_unserved(report.unserved_files)


def _say_unserved(count: int) -> None:
    if count:
        typer.echo(f"note: {count} items' image files lie outside the data's folders: searchable and shown by "
                   "thumbnail, but `serve` will not send their files unless --data-root names their folder")


def delete(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    ids: list[str] = typer.Argument(..., help="Item ids to remove."),
) -> None:
    """Remove items from an index (no rebuild: they are filtered out of every search)."""
    from visembed.index.backends import open_store

    with friendly_errors():
        store = open_store(index_dir)
        removed = store.delete(ids)
        store.commit()
    typer.echo(f"removed {removed}; {len(store)} items left")


def search(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    text: str = typer.Argument("", help="What to look for (any language the model reads)."),
    image: Path = typer.Option(None, "--image", help="Search by example; with TEXT, a composed query."),
    k: int = typer.Option(10, "-k", "--k", min=1, max=1000, help="Number of results."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: [{id, score, path, caption}], best first."),
    text_weight: float = typer.Option(0.5, "--text-weight", min=0.0, max=1.0, help="Composed queries: weight of TEXT."),
    model: Path = typer.Option(None, "--model", help="Model folder (default: the one recorded in the index)."),
) -> None:
    """Text -> image search, image -> image with --image, or both: "like this, but TEXT"."""
    from visembed.data import BadImage, load_image
    from visembed.index.searcher import Searcher

    with friendly_errors():
        text_argument(text, "TEXT")
        if not text.strip() and image is None:
            raise ValueError("give a query TEXT, an --image, or both")
        example = None
        if image is not None:  # a bad file fails before the model loads
            try:
                example = load_image(image)
            except BadImage as exc:
                raise ValueError(f"{image} is not a usable image ({exc.reason})") from None
        searcher = Searcher.open(index_dir, model)
        if example is not None:
            hits = searcher.search_image(example, k, text=text or None, text_weight=text_weight)
        else:
            hits = searcher.search_text(text, k)
    _print_hits(hits, as_json)


def recommend(
    ctx: typer.Context,
    index_dir: Path = typer.Argument(..., help="Index folder."),
    k: int = typer.Option(10, "-k", "--k", min=1, max=1000, help="Number of results."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: [{id, score, path, caption}], best first."),
    mmr_lambda: float = typer.Option(0.7, "--lambda", min=0.0, max=1.0, help="MMR: 1 = pure relevance, lower = more varied."),
) -> None:
    """Recommend from --liked ID ... [--disliked ID ...] (each flag takes one or more space-separated
    ids, and may repeat; --liked=ID takes one id, commas and all).

    Seen items are left out; results are diversified (MMR) and each names its nearest liked item.
    """
    from visembed.index.backends import open_store
    from visembed.index.searcher import Searcher

    with friendly_errors():
        liked, disliked = _id_lists(ctx.args)
        if not liked:
            raise ValueError("give at least one --liked ID")
        searcher = Searcher(open_store(index_dir), None, index_dir)  # vectors only: no model needed
        hits = searcher.recommend(liked, disliked, k, lam=mmr_lambda)
    _print_hits(hits, as_json)


def _id_lists(args: list[str]) -> tuple[list[str], list[str]]:
    """`--liked a b --disliked c --liked=d,e` -> (["a", "b", "d,e"], ["c"]): an id may hold a comma."""
    lists: dict[str, list[str]] = {"--liked": [], "--disliked": []}
    current = None
    for arg in args:
        flag, _, value = arg.partition("=")
        if flag in lists:
            current = lists[flag]
            values = [value] if value else []
        elif arg.startswith("--"):
            raise ValueError(f"unknown option {arg!r} (see --help)")
        elif current is None:
            raise ValueError(f"unexpected argument {arg!r}: ids follow --liked or --disliked")
        else:
            values = [arg]
        current.extend(v for v in values if v)
    return lists["--liked"], lists["--disliked"]


def serve(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback unless told otherwise)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
    model: Path = typer.Option(None, "--model", help="Model folder (default: the one recorded in the index)."),
    captioner: Path = typer.Option(None, "--captioner", help="Captioner folder (`visembed train-captioner`) for "
                                   "POST /caption and /chat and the page's captions and chat (default: the index's "
                                   "model, when it is a captioner)."),
    classifier: Path = typer.Option(None, "--classifier", help="Classifier folder (`visembed classify fit`) for "
                                    "POST /classify and the page's labels of uploaded images."),
    max_upload_mb: float = typer.Option(10.0, "--max-upload-mb", min=0.001, help="Largest accepted upload."),
    allowed_hosts: list[str] = typer.Option([], "--allowed-host", help="Another Host name clients may use (repeatable; "
                                            "loopback names and --host are always allowed: a guard against DNS rebinding)."),
    data_roots: list[Path] = typer.Option([], "--data-root", help="Another folder whose image files may be sent as "
                                          "items' originals (repeatable; the folders of the data the index was built "
                                          "from always are, never where paths inside the data point)."),
    allowed_origins: list[str] = typer.Option([], "--allowed-origin", help="A web origin (https://example.com) whose "
                                              "pages may POST to the service (repeatable; its own page always may)."),
    model_backend: str = BACKEND_OPTION,
    model_quantize: Optional[str] = QUANTIZE_OPTION,
) -> None:
    """Serve the web page and the HTTP API (search, upload, recommend, thumbnails, /docs; captions and
    image chat with a captioner); picks up index changes (`index add`, `index delete`, rebuilds) on the next request."""
    from visembed.serve.app import run_server

    with friendly_errors():
        if not 0.001 <= max_upload_mb <= 100_000:  # (inf and nan too)
            raise ValueError(f"--max-upload-mb must be a number of megabytes from 0.001 to 100000, not {max_upload_mb}")
        run_server(index_dir, host, port, model_dir=model, captioner_dir=captioner, classifier_dir=classifier,
                   max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                   allowed_hosts=list(allowed_hosts) or None, data_roots=list(data_roots),
                   allowed_origins=list(allowed_origins), model_backend=model_backend,
                   model_quantize=model_quantize)


def _print_hits(hits, as_json: bool) -> None:
    if as_json:
        rows = [{"id": h.id, "score": round(h.score, 6), "path": h.path, "caption": h.caption} for h in hits]
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=1))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    for column in ("#", "score", "id", "caption") + (("because you liked",) if any(h.because for h in hits) else ()):
        table.add_column(column, justify="right" if column in ("#", "score") else "left")
    for rank, h in enumerate(hits, 1):
        because = (escape(h.because or ""),) if any(x.because for x in hits) else ()
        table.add_row(str(rank), f"{h.score:.3f}", escape(h.id), escape(h.caption or ""), *because)  # text, not markup
    Console().print(table if hits else "no results")
