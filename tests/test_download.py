"""Downloads against a local HTTP server (Range support, cut connections) and safe archive extraction."""

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sedlib.cli import main as cli_main
from sedlib.data.download import download_file, extract_archive, fetch_archive, parse_checksum


class Server:
    """A local file server: ``files`` maps paths to bytes; it can cut the next responses after N bytes."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut_after: int | None = None  # body bytes sent before closing the connection (next request only)
        self.honour_range = True
        self.range_headers: list[str | None] = []
        handler = self._handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                data = server.files.get(self.path.lstrip("/"))
                range_header = self.headers.get("Range")
                server.range_headers.append(range_header)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if range_header and server.honour_range:
                    start = int(range_header.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    body, server.cut_after = body[: server.cut_after], None
                    self.close_connection = True
                self.wfile.write(body)
                self.wfile.flush()

        return Handler


@pytest.fixture()
def server():
    srv = Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    srv.thread.join(timeout=5)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


MEMBERS = {"audio/eval/public/a.wav": b"RIFF" + bytes(range(256)) * 40, "metadata/eval/public.tsv": b"filename\n"}


def test_download_extract_and_marker(server, tmp_path):
    server.files["desed.tar.gz"] = archive = tar_gz(MEMBERS)
    marker = tmp_path / "downloads" / "desed.tar.gz.done"
    entry = {"name": "desed.tar.gz", "url": server.url("desed.tar.gz"), "checksum": sha256(archive), "extract_to": "."}
    argv = ["download", "--archive-json", json.dumps(entry), "--root", str(tmp_path / "root"), "--marker", str(marker)]
    assert cli_main(argv) == 0
    record = json.loads(marker.read_text())
    assert record["files"] == sorted(MEMBERS) and record["checksum"] == entry["checksum"]
    for name, data in MEMBERS.items():
        assert (tmp_path / "root" / name).read_bytes() == data
    assert (tmp_path / "downloads" / "desed.tar.gz").read_bytes() == archive
    assert not list((tmp_path / "downloads").glob("*.part"))
    # A second run finds the verified archive and does not fetch it again.
    requests = len(server.range_headers)
    assert cli_main(argv) == 0 and len(server.range_headers) == requests


def test_md5_zip(server, tmp_path):
    server.files["x.zip"] = archive = zip_bytes(MEMBERS)
    checksum = "md5:" + hashlib.md5(archive).hexdigest()
    record = fetch_archive({"name": "x.zip", "url": server.url("x.zip"), "checksum": checksum, "extract_to": "sub"},
                           tmp_path / "root", tmp_path / "dl" / "x.zip.done")
    assert record["files"] == sorted(MEMBERS)
    assert (tmp_path / "root" / "sub" / "metadata" / "eval" / "public.tsv").read_bytes() == b"filename\n"


def test_bad_checksum_leaves_nothing(server, tmp_path):
    server.files["f.bin"] = b"payload" * 1000
    wrong = "sha256:" + "0" * 64
    marker = tmp_path / "dl" / "f.bin.done"
    with pytest.raises(ValueError) as info:
        fetch_archive({"name": "f.bin", "url": server.url("f.bin"), "checksum": wrong}, tmp_path / "root", marker)
    message = str(info.value)
    assert server.url("f.bin") in message and "expected " + wrong in message
    assert "got " + sha256(b"payload" * 1000) in message
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == []  # no dest, no .part, no .done


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    data = bytes(range(256)) * 4000  # 1 MB
    server.files["big.bin"] = data
    dest = tmp_path / "big.bin"
    server.cut_after = 300_000
    with pytest.raises(RuntimeError, match=r"transfer interrupted after 300000 bytes.*big\.bin\.part.*resumes"):
        download_file(server.url("big.bin"), dest, sha256(data), chunk_bytes=65536, attempts=1)
    assert not dest.exists() and (tmp_path / "big.bin.part").stat().st_size == 300_000
    download_file(server.url("big.bin"), dest, sha256(data), chunk_bytes=65536)
    assert server.range_headers[-1] == "bytes=300000-"
    assert dest.read_bytes() == data and not (tmp_path / "big.bin.part").exists()


def test_transfer_errors_are_retried_within_the_call_but_a_checksum_mismatch_is_final(server, tmp_path):
    data = bytes(range(256)) * 4000
    server.files["big.bin"] = data
    server.cut_after = 300_000
    download_file(server.url("big.bin"), tmp_path / "big.bin", sha256(data), chunk_bytes=65536)
    assert server.range_headers == [None, "bytes=300000-"] and (tmp_path / "big.bin").read_bytes() == data
    server.range_headers.clear()
    with pytest.raises(ValueError, match="checksum mismatch"):
        download_file(server.url("big.bin"), tmp_path / "other.bin", "sha256:" + "0" * 64)
    assert server.range_headers == [None], "a checksum mismatch must not be downloaded again"


def test_download_rule_is_never_retried_by_snakemake(tmp_path, copy_workflow):
    """The rule's own `retries: 0` overrides a profile's `retries` (e.g. profiles/slurm): mismatches stay final."""
    root = copy_workflow(tmp_path / "wf")
    script = """
import sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import OutputSettings, Quietness, ResourceSettings

root = Path(sys.argv[1]).resolve()
with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=root / "Snakefile", workdir=root)
    print({rule.name: rule._restart_times for rule in workflow._workflow.rules}["download"])
"""
    proc = subprocess.run([sys.executable, "-c", script, str(root)], cwd=root, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "0"


@pytest.mark.parametrize("extract_to", ["../../x", "/tmp/x", "sub/../../x"])
def test_extract_to_outside_the_dataset_root_is_refused(server, tmp_path, extract_to):
    server.files["a.tgz"] = archive = tar_gz({"f.txt": b"1"})
    entry = {"name": "a.tgz", "url": server.url("a.tgz"), "checksum": sha256(archive), "extract_to": extract_to}
    root = tmp_path / "data" / "root"
    with pytest.raises(ValueError, match=f"archive a.tgz: extract_to '{extract_to}' leads outside the dataset root"):
        fetch_archive(entry, root, tmp_path / "dl" / "a.tgz.done")
    assert not (tmp_path / "x").exists() and not (tmp_path / "data" / "x").exists()
    assert server.range_headers == [], "nothing is downloaded"


def test_server_ignoring_range_restarts(server, tmp_path):
    data = b"abcdefgh" * 10_000
    server.files["f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(b"garbage-prefix")
    server.honour_range = False
    download_file(server.url("f.bin"), tmp_path / "f.bin", sha256(data))
    assert server.range_headers == ["bytes=14-"]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_complete_part_and_http_errors(server, tmp_path):
    data = b"0123456789" * 100
    server.files["f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data)  # the server answers 416: nothing left to send
    download_file(server.url("f.bin"), tmp_path / "f.bin", sha256(data))
    assert (tmp_path / "f.bin").read_bytes() == data
    with pytest.raises(RuntimeError, match=r"missing\.bin: HTTP 404"):
        download_file(server.url("missing.bin"), tmp_path / "m.bin", sha256(b""))
    with pytest.raises(ValueError, match="expected 'md5:<32 hex>' or 'sha256:<64 hex>'"):
        parse_checksum("sha1:abc")


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "a/../../evil.txt"])
def test_archive_members_escaping_are_refused(tmp_path, name):
    for kind, data in (("zip", zip_bytes({"ok.txt": b"1", name: b"x"})), ("tgz", tar_gz({"ok.txt": b"1", name: b"x"}))):
        archive = tmp_path / f"a.{kind}"
        archive.write_bytes(data)
        dest = tmp_path / f"dest_{kind}"
        with pytest.raises(ValueError, match="would be written outside the destination folder; refused"):
            extract_archive(archive, dest)
        assert not (tmp_path / "evil.txt").exists() and list(dest.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temp folders removed


def test_tar_symlink_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    (tmp_path / "a.tar").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="'link' is a link or special file; refused"):
        extract_archive(tmp_path / "a.tar", tmp_path / "dest")
    (tmp_path / "plain.bin").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="not a zip or tar archive"):
        extract_archive(tmp_path / "plain.bin", tmp_path / "dest")
