"""Download with mirrors, streaming to a temporary file, checksum verification and an atomic rename.

A file appears at its destination only after it verified; a failed or interrupted download leaves
nothing behind (the temporary file lives beside the destination and is removed on any failure).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

from advforensics.errors import DataFileError

logger = logging.getLogger(__name__)

Opener = Callable[..., IO[bytes]]
Verifier = Callable[[Path, str], str | None]  # (temp file, its md5) -> None if good, else the reason


def _fetch(url: str, handle: IO[bytes], opener: Opener, timeout: float) -> str:
    """Stream `url` into `handle`; return the md5 of what was written."""
    digest = hashlib.md5(usedforsecurity=False)
    request = urllib.request.Request(url, headers={"User-Agent": "advforensics"})
    with opener(request, timeout=timeout) as response:
        total = getattr(response, "length", None) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                  disable=None, leave=False) as bar:
            while block := response.read(1 << 20):
                handle.write(block)
                digest.update(block)
                bar.update(len(block))
    return digest.hexdigest()


def download_file(urls: Sequence[str], destination: str | os.PathLike[str], *, md5: str | None = None,
                  verify: Verifier | None = None, opener: Opener | None = None,
                  timeout: float = 60.0) -> Path:
    """Fetch the first mirror that yields a verified file and rename it onto `destination`.

    A file verifies if its md5 equals `md5`, or if `verify(tmp_path, md5_of_tmp)` returns None (used to
    accept mirrors that re-compressed a file whose decompressed content still matches). With neither
    given, the download is refused: unverified data never lands. Raises DataFileError naming every
    mirror and why it failed.
    """
    if md5 is None and verify is None:
        raise DataFileError(f"refusing to download {destination} without a checksum to verify it")
    if not urls:
        raise DataFileError(f"no download URL is known for {destination}")
    target = Path(destination)
    target.parent.mkdir(parents=True, exist_ok=True)
    opener = opener or urllib.request.urlopen
    failures: list[str] = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                got = _fetch(url, handle, opener, timeout)
            reason = None if md5 is not None and got == md5 else (
                verify(tmp, got) if verify is not None else f"md5 {got} != expected {md5}")
            if reason is None:
                os.replace(tmp, target)
                logger.info("downloaded %s from %s (md5 %s)", target, url, got)
                return target
            failures.append(f"{url}: checksum mismatch ({reason})")
        except DataFileError as error:
            failures.append(f"{url}: {error}")
        except (OSError, ValueError) as error:  # URLError/HTTPError are OSErrors; ValueError: bad URL
            failures.append(f"{url}: {error}")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.unlink(missing_ok=True)
    raise DataFileError(f"could not download {target.name}: " + "; ".join(failures))
