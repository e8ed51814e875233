"""Content manifest of a local audio folder: one ``name size mtime_ns`` line per audio file.

Snakemake sees a change of local data only through files. The rules refresh a local split's manifest while
the DAG is built and make it an input of ``resample``; it is rewritten only when the listing changed, so adding,
removing or replacing audio re-resamples that split (and what depends on it) and nothing else. Names, sizes
and modification times are cheap to read and change whenever a file is replaced or edited.
"""

from __future__ import annotations

from pathlib import Path

from sedlib.data.audio_names import is_audio_name
from sedlib.io import write_text

HEADER = "filename\tbytes\tmtime_ns"


def audio_manifest(folder: str | Path) -> str:
    """The manifest text of ``folder``'s audio files (by suffix, sorted by name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: audio folder not found")
    lines = [HEADER]
    for path in sorted(p for p in folder.iterdir() if p.is_file() and is_audio_name(p.name)):
        stat = path.stat()
        lines.append(f"{path.name}\t{stat.st_size}\t{stat.st_mtime_ns}")
    return "\n".join(lines) + "\n"


def refresh_manifest(folder: str | Path, out: str | Path) -> Path:
    """Write ``folder``'s manifest to ``out`` unless ``out`` already holds exactly that text; return ``out``."""
    out = Path(out)
    text = audio_manifest(folder)
    if not out.is_file() or out.read_text() != text:
        write_text(out, text)
    return out
