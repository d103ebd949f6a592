"""LLaVA-format JSON: a list of `{"id"?, "image", "conversations": [{"from": "human" | "gpt", "value"}]}`.

Image paths are relative to the JSON file's folder. Each entry becomes a Sample whose
`meta["conversations"]` is its dialogue in our turn format (see `conversations.py`; human -> user,
gpt -> assistant) and whose `caption` is the first answer, so contrastive training and retrieval
eval can read the same file. As LLaVA's own preprocessing does, the one `<image>` of the first
human turn is moved to its start. Entries with a `split` field are filtered like manifest rows;
without one, every entry belongs to every split requested. Entries that cannot be used (no image,
a missing file, no answer, no or several `<image>`, roles out of turn) are skipped and counted by
reason in `skipped`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .conversations import IMAGE_TOKEN, conversation_problem, with_image
from .images import SkipCounter, image_file
from .manifest import rows_of_split
from .sample import DataError, ListDataset, Sample

ROLE_OF = {"human": "user", "gpt": "assistant"}  # LLaVA's "from" -> our "role"
SHAPE = '[{"image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}]}]'


def convert_conversation(turns) -> list[dict] | str:
    """LLaVA turns -> our conversation, or the reason it cannot be one."""
    if not isinstance(turns, list) or not turns:
        return "no_conversations"
    converted = []
    for turn in turns:
        if not isinstance(turn, dict) or turn.get("from") not in ROLE_OF or not isinstance(turn.get("value"), str):
            return "bad_roles"
        converted.append({"role": ROLE_OF[turn["from"]], "content": turn["value"].strip()})
    first = converted[0]["content"]
    if converted[0]["role"] == "user" and first.count(IMAGE_TOKEN) == 1:
        converted[0]["content"] = with_image(first.replace(IMAGE_TOKEN, "").strip()).rstrip("\n")
    return conversation_problem(converted) or converted


def open_llava(path: str | Path, split: str = "train", *, language: str = "en") -> ListDataset:
    """Read a LLaVA JSON file into a map-style dataset; a file with no usable entry is a DataError.

    `language` is accepted for a uniform signature: the conversations are used as written.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such LLaVA JSON file: {path}")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:  # the parser recurses per level: 100,000 `[` exhaust the stack
        raise DataError(f"{path}: the JSON nests too deep to be a LLaVA file") from None
    if entries == []:
        raise DataError(f"{path}: the file is an empty list (no conversations)")
    if not isinstance(entries, list) or not any(isinstance(e, dict) and "conversations" in e for e in entries):
        raise DataError(f"{path}: a .json data file must be a LLaVA-style list of conversations, {SHAPE}")

    skipped = SkipCounter()
    rows = [entry for entry in entries if isinstance(entry, dict)]
    skipped.add("bad_entry", len(entries) - len(rows))
    if any("split" in row for row in rows):
        rows = rows_of_split(rows, split, path)

    samples: list[Sample] = []
    seen: dict[str, int] = {}
    first_missing = None
    for number, row in enumerate(rows):
        image = row.get("image")
        if not isinstance(image, str) or not image.strip():
            skipped.add("missing_image")  # text-only entries of LLaVA's instruction mixes land here too
            continue
        conversation = convert_conversation(row.get("conversations"))
        if isinstance(conversation, str):
            skipped.add(conversation)
            continue
        file_path, problem = image_file(path.parent, image)
        if file_path is None:
            skipped.add(problem)
            if problem == "missing_file":
                first_missing = first_missing or str(path.parent / image)
            continue
        base_id = str(row.get("id") or image)
        count = seen.get(base_id, 0)
        seen[base_id] = count + 1
        samples.append(
            Sample(
                id=base_id if count == 0 else f"{base_id}#{count}",  # one image, several dialogues
                image=file_path,
                caption=conversation[1]["content"],
                path=file_path,
                meta={"source": str(path), "conversations": conversation},
            )
        )
    if not samples:
        cause = f"first missing: {first_missing}" if first_missing else skipped.summary()
        raise DataError(f"none of the {len(entries)} entries of {path} is usable: {cause}")
    return ListDataset(samples, skipped=skipped)
