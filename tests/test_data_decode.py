"""The one decode-and-count loop that training, evaluation, embedding and the demo share."""

import io

import pytest
from PIL import Image

from visembed.data import Sample, SkipCounter, decoded, decoded_batches


def png(colour="red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (6, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def samples(tmp_path):
    return [
        Sample(id="a", image=png(), caption="red"),
        Sample(id="junk", image=b"not an image", caption="junk"),
        Sample(id="b", image=png("blue"), caption=" "),
        Sample(id="gone", image=str(tmp_path / "gone.png"), caption="gone"),
        Sample(id="c", image=png("green"), caption="green"),
    ]


def test_decoded_yields_rgb_pictures_and_counts_each_skip(tmp_path):
    skipped = SkipCounter()
    pairs = list(decoded(samples(tmp_path), skipped))
    assert [s.id for s, _ in pairs] == ["a", "b", "c"]
    assert all(image.mode == "RGB" and image.size == (6, 4) for _, image in pairs)
    assert skipped.as_dict() == {"missing_file": 1, "unreadable": 1}
    with_captions = SkipCounter()
    assert [s.id for s, _ in decoded(samples(tmp_path), with_captions, need_caption=True)] == ["a", "c"]
    assert with_captions.as_dict() == {"empty_caption": 1, "missing_file": 1, "unreadable": 1}


def test_limit_counts_usable_samples_and_reads_no_further(tmp_path):
    read = []

    def stream():
        for sample in samples(tmp_path):
            read.append(sample.id)
            yield sample

    skipped = SkipCounter()
    assert [s.id for s, _ in decoded(stream(), skipped, limit=2)] == ["a", "b"]
    assert read == ["a", "junk", "b"] and skipped.as_dict() == {"unreadable": 1}


def test_batches_hold_at_most_batch_size_pictures(tmp_path):
    skipped = SkipCounter()
    batches = list(decoded_batches(samples(tmp_path) * 2, skipped, 4))
    assert [[s.id for s, _ in batch] for batch in batches] == [["a", "b", "c", "a"], ["b", "c"]]
    assert skipped.total == 4
    with pytest.raises(ValueError, match="batch_size"):
        list(decoded_batches([], skipped, 0))
