"""The `visembed` command line: thin wrappers that parse, call the library and print."""

from __future__ import annotations

from typing import Optional

import typer

from visembed.commands import (caption_cmds, classify_cmd, data_cmds, demo_cmd, embed_cmd, eval_cmd, export_cmd, index_cmds,
                               merge_cmd, train_cmd)

app = typer.Typer(
    help="visembed: learn visual embeddings (images and text in one space) and put them to work.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _before_every_command(
    threads: Optional[str] = typer.Option(
        None, "--threads", metavar="N|auto",
        help="CPU threads torch may use (also VISEMBED_THREADS). auto (the default): every core, waiting passively "
             "when other processes keep the cores busy, so that visembed beside them slows by its share, not 3-4x "
             "(docs/speed.md)."),
) -> None:
    import sys

    from visembed.commands.errors import friendly_errors
    from visembed.threads import configure_threads

    args = sys.argv[1:]
    if "--help" in (args[:args.index("--")] if "--" in args else args):
        return  # help text only: no torch to prepare, and no quarter second spent looking at the machine
    with friendly_errors():
        configure_threads(threads)  # before torch loads (every command imports it later)


for module in (train_cmd, caption_cmds, eval_cmd, embed_cmd, data_cmds, demo_cmd, index_cmds, export_cmd, merge_cmd,
               classify_cmd):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
