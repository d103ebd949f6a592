"""`visembed embed`: a dataset's image (or caption) vectors as OUT.npy, with their ids in OUT.ids.txt."""

from __future__ import annotations

from pathlib import Path

import typer

from visembed.commands.errors import friendly_errors, output_folder


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)


def embed(
    folder: Path = typer.Argument(..., help="Run or model folder, hf:PATH or openclip:PATH."),
    data: str = typer.Option(..., "--data", help="Data spec of the images to embed."),
    out: Path = typer.Option(..., "--out", help="Output prefix: writes OUT.npy (float32 N x D) and OUT.ids.txt."),
    split: str = typer.Option("test", "--split", help="Split name."),
    text: bool = typer.Option(False, "--text", help="Embed the captions instead of the images."),
) -> None:
    """Write image (or caption) embeddings as .npy with their ids, one per line."""
    import visembed
    from visembed.atomic import atomic_write_npy, atomic_write_text
    from visembed.data import SkipCounter, open_dataset
    from visembed.eval.run import embed_images

    with friendly_errors():
        output_folder(out, "--out")  # (a prefix: its folders must be folders) before embedding, not after
        model = visembed.load(folder)
        ds = open_dataset(data, split)
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
    typer.echo(f"wrote {len(samples)} embeddings to {out}.npy and ids to {out}.ids.txt; {skipped.summary()}")
