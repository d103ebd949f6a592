"""The index commands through the real `visembed` CLI: JSON contract, multi-id flags, clear errors."""

import json

from typer.testing import CliRunner

from test_index_build import shapes_index
from visembed.cli import app
from visembed.commands.index_cmds import _id_lists

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_build_search_recommend_delete(tiny_model_dir, tmp_path):
    out = tmp_path / "index"
    result = run("index", "build", tiny_model_dir, "--data", "builtin:shapes?n=50", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert "indexed 50 items" in result.output  # every split, not only train

    result = run("search", out, "a red circle", "-k", "5", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert len(hits) == 5 and all(set(h) == {"id", "score", "path", "caption"} for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    a, b, c = (h["id"] for h in hits[:3])
    result = run("recommend", out, "--liked", a, b, "--disliked", c, "-k", "4", "--json")
    assert result.exit_code == 0, result.output
    recs = json.loads(result.output)
    assert len(recs) == 4 and not {a, b, c} & {r["id"] for r in recs}

    table = run("recommend", out, "--liked", a, "-k", "3")
    assert table.exit_code == 0 and "because you liked" in table.output and a in table.output

    assert run("index", "delete", out, a).exit_code == 0
    result = run("search", out, "a red circle", "-k", "40", "--json")
    assert a not in {h["id"] for h in json.loads(result.output)}


def test_search_by_image_and_composed(tiny_model_dir, tmp_path_factory, tmp_path):
    index_dir = shapes_index(tiny_model_dir, tmp_path_factory)
    first = json.loads(run("search", index_dir, "a blue square", "-k", "1", "--json").output)[0]
    example = tmp_path / "example.png"
    from visembed.index import Searcher

    example.write_bytes(Searcher.open(index_dir).thumbnail(first["id"])[0])
    hits = json.loads(run("search", index_dir, "--image", example, "-k", "3", "--json").output)
    assert first["id"] in [h["id"] for h in hits] and abs(hits[0]["score"] - 1.0) < 1e-3
    composed = json.loads(run("search", index_dir, "green", "--image", example, "-k", "3", "--json").output)
    assert composed[0]["score"] < 0.999  # the text moved the query away from the example itself


def test_errors_are_one_line_and_exit_code_2(tiny_model_dir, tmp_path_factory, tmp_path):
    index_dir = shapes_index(tiny_model_dir, tmp_path_factory)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "index.json").write_text("{oops")
    cases = {
        ("search", tmp_path / "nowhere", "x"): "no index at",
        ("search", tmp_path / "broken", "x"): "not valid JSON",
        ("search", index_dir): "give a query TEXT",
        ("search", index_dir, "--image", tmp_path / "junk.png"): "not a usable image",
        ("recommend", index_dir, "--liked", "no-such-id"): "no item with id 'no-such-id'",
        ("recommend", index_dir, "-k", "3"): "at least one --liked",
        ("recommend", index_dir, "--liked", "x", "--bogus"): "unknown option",
        ("index", "build", tmp_path / "no-model", "--data", "builtin:shapes", "--out", tmp_path / "o"): "no model folder",
        ("index", "build", tiny_model_dir, "--data", "builtin:shapes", "--out", tmp_path / "o", "--kind", "annoy"): "unknown index kind",
        ("index", "add", tmp_path / "nowhere", "--data", "builtin:shapes"): "no index at",
    }
    for args, message in cases.items():
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, (args, result.output)


def test_id_lists_accept_spaces_and_repeats_and_keep_commas_in_ids():
    assert _id_lists(["--liked", "a", "b", "--disliked", "c", "--liked=d,e", "--liked", "f,g"]) == (["a", "b", "d,e", "f,g"], ["c"])


def test_markup_in_captions_is_printed_as_text_and_index_add(tiny_model_dir, tmp_path):
    from PIL import Image

    rows = {"red": "a [/b] red [bold]square", "green": "green [link=x]", "blue": "blue \\[/] [/i]"}
    for name in rows:
        Image.new("RGB", (32, 32), name).save(tmp_path / f"{name}.png")
    first = tmp_path / "first.csv"
    first.write_text("id,image,caption\nred[x],red.png,\"a [/b] red [bold]square\"\n")
    everything = tmp_path / "all.csv"
    everything.write_text("id,image,caption\n" + "".join(f"{n}[x],{n}.png,\"{c}\"\n" for n, c in rows.items()))
    out = tmp_path / "index"
    assert run("index", "build", tiny_model_dir, "--data", first, "--out", out, "--quiet").exit_code == 0

    result = run("index", "add", out, "--data", everything, "--quiet")
    assert result.exit_code == 0, result.output
    assert "added 2 items" in result.output and "1 already there" in result.output and "3 items in total" in result.output

    result = run("search", out, "a red square", "-k", "3")
    assert result.exit_code == 0, result.output
    for name, caption in rows.items():
        assert f"{name}[x]" in result.output and caption in result.output
    result = run("recommend", out, "--liked", "red[x]", "-k", "2")
    assert result.exit_code == 0 and "red[x]" in result.output, result.output
