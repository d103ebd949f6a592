"""The `visembed` command line: thin wrappers that parse, call the library and print."""

from __future__ import annotations

import typer

from visembed.commands import (caption_cmds, classify_cmd, data_cmds, demo_cmd, embed_cmd, eval_cmd, export_cmd, index_cmds,
                               merge_cmd, train_cmd)

app = typer.Typer(
    help="visembed: learn visual embeddings (images and text in one space) and put them to work.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (train_cmd, caption_cmds, eval_cmd, embed_cmd, data_cmds, demo_cmd, index_cmds, export_cmd, merge_cmd,
               classify_cmd):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
