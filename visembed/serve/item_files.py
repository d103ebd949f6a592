"""Sending an item's original image file, and nothing else.

The index metadata names a path; the file system may have changed since: an image replaced by a
symlink to a secret, a folder swapped for a link out of the data; and the data itself may name
any file on the machine (`"image": "../../private/x.png"`). A file is sent only when it is a
regular file (not a link), its real path lies under a folder the operator named (the data specs
the index was built from, `serve --data-root`), and Pillow recognises it as an image; its media type comes from what Pillow found, not
from the file name. Anything else is answered as if the file were not there (the caller falls
back to the thumbnail when the file is simply gone, and answers 404 when it is there but refused).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from PIL import Image

from visembed.data.images import DECODABLE_FORMATS
from visembed.index.build import index_data_roots

MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp",
               "BMP": "image/bmp", "TIFF": "image/tiff"}
CHUNK = 256 * 1024


def data_roots(index_info: dict, operator_roots: list[Path] = ()) -> list[Path]:
    """The folders files are sent from: those of the data specs the index was built from, as
    recorded at build time (they were real paths then, and resolving them again would follow a
    folder swapped for a link since), and those the operator named (`serve --data-root`).
    Never a folder that a path inside the data points to."""
    return [Path(root) for root in index_data_roots(index_info)] + [Path(root) for root in operator_roots]


class RefusedFile(Exception):
    """The recorded path exists but is not a file we send (a link, outside the roots, not an image)."""


def open_item_image(path: str | None, roots: list[Path]):
    """(open binary file positioned at 0, media type) for a safe original; None when there is no
    file at the recorded path; `RefusedFile` when there is one we must not send."""
    if not path:
        return None
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError):  # too long, no permission
        raise RefusedFile(path) from None
    if stat.S_ISLNK(mode):
        raise RefusedFile(path)
    real = Path(os.path.realpath(path))  # catches a linked folder anywhere on the way
    if not any(real.is_relative_to(root) for root in roots):
        raise RefusedFile(path)
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        raise RefusedFile(path) from None
    f = os.fdopen(fd, "rb")
    try:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # a FIFO or device would block or never end
            raise OSError("not a regular file")
        with Image.open(f, formats=DECODABLE_FORMATS) as image:  # reads the header only
            media_type = MEDIA_TYPES.get(image.format or "")
            image.verify()  # checks the structure (PNG chunk CRCs, ...) without decoding pixels
        if media_type is None:
            raise OSError("unexpected format")
        f.seek(0)
        return f, media_type
    except Exception:  # not an image, or a broken one: not sent
        f.close()
        raise RefusedFile(path) from None


def file_chunks(f):
    """Stream an opened file and close it at the end (or when the client goes away)."""
    with f:
        while chunk := f.read(CHUNK):
            yield chunk
