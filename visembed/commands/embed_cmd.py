"""`visembed embed`: a dataset's image (or caption) vectors as OUT.npy with their ids in OUT.ids.txt, or
in clip-retrieval's layout (`--format clip-retrieval`: OUT/img_emb/*.npy + OUT/metadata/*.parquet).

One process embeds in one pass, as it always did. Under `torchrun` (or with `--format
clip-retrieval`) the images go through the index's resumable shards (`index.embed`): each rank
embeds shard i where i mod world is its rank, a rerun reuses finished shards, and rank 0 writes
the output once every shard is there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from visembed.commands.errors import friendly_errors, output_folder
from visembed.commands.options import BACKEND_OPTION, QUANTIZE_OPTION

FORMATS = ("npy", "clip-retrieval")


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)


def embed(
    folder: Path = typer.Argument(..., help="Run or model folder, hf:PATH or openclip:PATH."),
    data: str = typer.Option(..., "--data", help="Data spec of the images to embed."),
    out: Path = typer.Option(..., "--out", help="npy: output prefix, writes OUT.npy (float32 N x D) and OUT.ids.txt; "
                                                "clip-retrieval: a folder, writes OUT/img_emb/ and OUT/metadata/."),
    split: str = typer.Option("test", "--split", help="Split name."),
    text: bool = typer.Option(False, "--text", help="Embed the captions instead of the images (npy, one process)."),
    out_format: str = typer.Option("npy", "--format", help="npy, or clip-retrieval (float16 img_emb_N.npy + "
                                   "metadata_N.parquet per shard: what autofaiss and clip-retrieval read)."),
    shard_size: int = typer.Option(1000, "--shard-size", min=1, help="Images per shard (sharded runs: the unit of "
                                   "resumption and of work per process)."),
    model_backend: str = BACKEND_OPTION,
    model_quantize: Optional[str] = QUANTIZE_OPTION,
) -> None:
    """Write image (or caption) embeddings as .npy with their ids, one per line, or in clip-retrieval's
    layout. Runs across processes under `torchrun --nproc_per_node N -m visembed.cli embed ...`."""
    from visembed import distributed

    with friendly_errors():
        if out_format not in FORMATS:
            raise ValueError(f"--format {out_format!r}: choose {' or '.join(FORMATS)}")
        output_folder(out, "--out")  # (a prefix or a folder: its folders must be folders) before embedding, not after
        rank, world = distributed.init_distributed()[:2]
        if text and (world > 1 or out_format != "npy"):
            raise ValueError("--text embeds captions in one process, to .npy only")
        try:
            if world == 1 and out_format == "npy":
                message = _embed_in_one_pass(folder, data, out, split, text, model_backend, model_quantize)
            else:
                message = _embed_in_shards(folder, data, out, split, out_format, shard_size, rank,
                                           model_backend, model_quantize)
        finally:
            distributed.cleanup()
    if rank == 0:
        typer.echo(message)


def _embed_in_one_pass(folder: Path, data: str, out: Path, split: str, text: bool, model_backend: str,
                       model_quantize: str | None) -> str:
    import visembed
    from visembed.atomic import atomic_write_npy, atomic_write_text
    from visembed.data import SkipCounter, open_dataset
    from visembed.eval.run import embed_images

    model = visembed.load(folder, backend=model_backend, quantize=model_quantize)
    ds = open_dataset(data, split, need="caption" if text else "nothing")
    skipped = SkipCounter()
    if text:
        samples = list(ds)
        vectors = model.encode_text([sample.caption for sample in samples])  # (N, D)
    else:
        total = None if getattr(ds, "streaming", False) else len(ds)
        samples, vectors = embed_images(model, ds, skipped, progress=True, total=total, desc="embed")
    if getattr(ds, "skipped", None) is not None:
        skipped.update(ds.skipped)  # rows the source left out
    out.parent.mkdir(parents=True, exist_ok=True)
    # ids first, vectors last: a reader that finds OUT.npy finds the ids of this run beside it
    atomic_write_text(Path(f"{out}.ids.txt"), "".join(f"{sample.id}\n" for sample in samples))
    atomic_write_npy(Path(f"{out}.npy"), vectors.astype("float32", copy=False))
    return f"wrote {len(samples)} embeddings to {out}.npy and ids to {out}.ids.txt; {skipped.summary()}"


def _embed_in_shards(folder: Path, data: str, out: Path, split: str, out_format: str, shard_size: int,
                     rank: int, model_backend: str, model_quantize: str | None) -> str:
    import visembed
    from visembed import distributed
    from visembed.atomic import atomic_write_npy, atomic_write_text
    from visembed.data import open_dataset
    from visembed.index.build import quantized, weights_sha256
    from visembed.index.embed import embed_dataset, read_shards, write_clip_retrieval
    from visembed.interop.cache import resolve_model

    model_dir = resolve_model(folder).resolve()
    work = out / "visembed-shards" if out_format == "clip-retrieval" else Path(f"{out}.shards")
    model = visembed.load(model_dir, backend=model_backend, quantize=model_quantize)
    source = {"weights_sha256": weights_sha256(model_dir), "data_spec": data, "split": split, "language": "en",
              **quantized(model)}
    dataset = open_dataset(data, split, need="nothing")
    report = embed_dataset(model, dataset, work, source=source, shard_size=shard_size, progress=rank == 0,
                           rank=rank, world=distributed.world_size())
    distributed.barrier()  # every shard is on disk
    if rank != 0:
        return ""
    vectors, items, skipped = read_shards(work, report.names)
    if getattr(dataset, "skipped", None) is not None:
        skipped.update(dataset.skipped)
    if out_format == "clip-retrieval":
        n = write_clip_retrieval(work, report.names, out)
        return f"wrote {n} embeddings to {out}/img_emb and their metadata to {out}/metadata; {skipped.summary()}"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(f"{out}.ids.txt"), "".join(f"{item['id']}\n" for item in items))
    atomic_write_npy(Path(f"{out}.npy"), vectors)
    return f"wrote {len(items)} embeddings to {out}.npy and ids to {out}.ids.txt; {skipped.summary()}"
