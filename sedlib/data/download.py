"""Checksum-verified, resumable HTTP(S) downloads and safe archive extraction (``download`` command).

A download is written to ``dest.part``; an interrupted transfer is resumed with an HTTP Range request (a server
that ignores Range restarts it from zero), within the same call up to ``attempts`` times, then by a later call.
The file is moved to ``dest`` only after its checksum verifies; a checksum mismatch is final (never retried).
Archives are extracted into a temporary folder beside the destination and then moved into place, and members
that would land outside the destination (absolute paths, ``..``, links, devices) are refused.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from sedlib.io import write_json

log = logging.getLogger(__name__)

CHECKSUM_PATTERN = re.compile(r"^(md5|sha256):([0-9a-f]+)$")
DIGEST_LENGTHS = {"md5": 32, "sha256": 64}
USER_AGENT = "sedlib-download/1"
ATTEMPTS = 3  # transfers per download_file call (the first + 2 retries of transfer errors)


class TransferError(RuntimeError):
    """A transfer failed in a way worth retrying (connection, interruption, server-side HTTP error)."""


def parse_checksum(checksum: str) -> tuple[str, str]:
    """('md5' | 'sha256', hex digest) of an 'algorithm:hex' checksum string."""
    match = CHECKSUM_PATTERN.match(checksum or "")
    if not match or len(match.group(2)) != DIGEST_LENGTHS[match.group(1)]:
        raise ValueError(f"checksum {checksum!r}: expected 'md5:<32 hex>' or 'sha256:<64 hex>'")
    return match.group(1), match.group(2)


def file_digest(path: str | Path, algorithm: str, chunk_bytes: int = 1 << 20) -> str:
    """Hex digest of a file's bytes with hashlib's ``algorithm``."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str, dest: str | Path, checksum: str, chunk_bytes: int = 1 << 20, timeout: float = 60.0,
    attempts: int = ATTEMPTS,
) -> Path:
    """Download ``url`` to ``dest`` and verify ``checksum`` ('md5:<hex>' | 'sha256:<hex>'); return ``dest``.

    An existing ``dest`` with the right checksum is kept. Bytes go to ``dest.part``; when that exists the
    transfer resumes with ``Range: bytes=<size>-`` (206 appends, 200 restarts). A TransferError is retried (resuming)
    up to ``attempts`` transfers in all, then raised with the .part kept for the next call; other HTTP errors
    raise RuntimeError at once; a checksum mismatch raises ValueError and deletes the .part.
    """
    algorithm, expected = parse_checksum(checksum)
    dest = Path(dest)
    if dest.exists():
        if file_digest(dest, algorithm) == expected:
            log.info("%s already present with %s %s", dest, algorithm, expected)
            return dest
        log.warning("%s exists with another checksum; downloading it again", dest)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, attempts + 1):
        try:
            _fetch_to_part(url, part, chunk_bytes, timeout)
            break
        except TransferError as exc:
            if attempt == attempts:
                raise
            log.warning("%s (transfer %d of %d); retrying", exc, attempt, attempts)
    actual = file_digest(part, algorithm)
    if actual != expected:
        part.unlink()
        raise ValueError(
            f"checksum mismatch for {url} (file {dest}): expected {algorithm}:{expected}, "
            f"got {algorithm}:{actual}; the partial file was deleted"
        )
    os.replace(part, dest)
    log.info("downloaded %s -> %s (%d bytes, %s verified)", url, dest, dest.stat().st_size, algorithm)
    return dest


def _fetch_to_part(url: str, part: Path, chunk_bytes: int, timeout: float) -> None:
    """Bring ``part`` to the full content of ``url``, resuming from its current size when the server allows."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: the .part already holds the whole file
            log.info("%s: server reports %s complete (%d bytes)", url, part, offset)
            return
        error = TransferError if exc.code >= 500 or exc.code in (408, 429) else RuntimeError
        raise error(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise TransferError(f"{url}: cannot connect: {exc}") from exc
    with response:
        mode = "wb"
        if offset and response.status == 206:
            start = _content_range_start(response.headers.get("Content-Range", ""))
            if start == offset:
                mode = "ab"
                log.info("%s: resuming at byte %d", url, offset)
            else:
                raise TransferError(f"{url}: asked for bytes from {offset}, server sent a range starting at {start}")
        elif offset:
            log.info("%s: server ignored the Range request (HTTP %d); restarting from byte 0", url, response.status)
        announced = response.headers.get("Content-Length")
        written, problem = 0, None
        with open(part, mode) as handle:
            try:
                for chunk in iter(lambda: response.read(chunk_bytes), b""):
                    handle.write(chunk)
                    written += len(chunk)
            except (http.client.HTTPException, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
        if problem is None and announced is not None and written < int(announced):
            problem = f"connection closed {int(announced) - written} bytes before the announced end"
        if problem is not None:
            total = (offset if mode == "ab" else 0) + written
            raise TransferError(
                f"{url}: transfer interrupted after {total} bytes ({problem}); "
                f"the partial download is kept in {part} and the next run resumes it"
            )


def _content_range_start(header: str) -> int | None:
    match = re.match(r"bytes\s+(\d+)-\d+/(\d+|\*)", header.strip())
    return int(match.group(1)) if match else None


# ----------------------------------------------------------------------------- extraction
def extract_archive(path: str | Path, dest_dir: str | Path) -> list[str]:
    """Extract a zip or tar (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz) into ``dest_dir``; return the file paths.

    Members with absolute paths or ``..`` components, links and special files are refused (ValueError naming
    the member). Extraction goes to a temporary folder beside ``dest_dir``; files are then moved into
    ``dest_dir`` (merging with what is there). Returns the extracted files, POSIX paths relative to ``dest_dir``.
    """
    path, dest_dir = Path(path), Path(dest_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: archive not found")
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.extract-", dir=dest_dir.parent))
    try:
        if zipfile.is_zipfile(path):
            _extract_zip(path, tmp)
        elif tarfile.is_tarfile(path):
            _extract_tar(path, tmp)
        else:
            raise ValueError(f"{path}: not a zip or tar archive")
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        for name in files:
            target = dest_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / name, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("extracted %d files from %s into %s", len(files), path, dest_dir)
    return files


def _check_member_name(archive: Path, name: str) -> None:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"{archive}: member {name!r} would be written outside the destination folder; refused")


def _extract_zip(path: Path, dest: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            _check_member_name(path, info.filename)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise ValueError(f"{path}: member {info.filename!r} is a symbolic link; refused")
        archive.extractall(dest)


def _extract_tar(path: Path, dest: Path) -> None:
    with tarfile.open(path, "r:*") as archive:
        members = archive.getmembers()
        for member in members:
            _check_member_name(path, member.name)
            if not (member.isfile() or member.isdir()):
                raise ValueError(f"{path}: member {member.name!r} is a link or special file; refused")
        archive.extractall(dest, members=members, filter="data")


# ----------------------------------------------------------------------------- rule-level
def folder_under(root: str | Path, relative: str, what: str) -> Path:
    """``root / relative``, which must stay inside ``root`` once resolved (no absolute path, ``..`` or link out)."""
    root = Path(root)
    target = root / relative
    if not target.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{what} {relative!r} leads outside the dataset root {root}; refused")
    return target


def fetch_archive(archive: dict, root: str | Path, marker: str | Path) -> dict:
    """Download one configured archive next to ``marker``, extract it under ``root``, write ``marker`` last.

    archive: a ``datasets.<name>.archives`` entry (name, url, checksum, extract_to). The archive file is kept
    as ``<marker folder>/<name>``; the marker JSON lists url, checksum and the extracted files.
    """
    marker = Path(marker)
    target = folder_under(root, archive.get("extract_to", "."), f"archive {archive['name']}: extract_to")
    dest = download_file(archive["url"], marker.parent / archive["name"], archive["checksum"])
    files = extract_archive(dest, target)
    record = {
        "name": archive["name"],
        "url": archive["url"],
        "checksum": archive["checksum"],
        "extracted_to": str(target),
        "files": files,
    }
    write_json(marker, record)
    return record


def configure_download(parser: argparse.ArgumentParser):
    parser.add_argument("--archive-json", required=True, help="one archives entry: {name, url, checksum, extract_to}")
    parser.add_argument("--root", required=True, help="dataset root the archive is extracted under")
    parser.add_argument("--marker", required=True, help="completion marker (.done JSON), written last")

    def run(args: argparse.Namespace) -> int:
        record = fetch_archive(json.loads(args.archive_json), args.root, args.marker)
        log.info("%s: %d files under %s", args.marker, len(record["files"]), record["extracted_to"])
        return 0

    return run
