"""Data location and the checksummed downloader, against a loopback HTTP server started here (never the internet)."""

import gzip
import hashlib
import http.server
import os
import socket
import threading

import numpy as np
import pytest
from fixtures import DATA, MNIST_DIR

from experiments import _cli, mnist
from lld_jax._src import download
from lld_jax.data import DATA_ENV, DownloadError, load_mnist, locate


class Server:
    """A loopback HTTP server; ``routes`` maps a path to (body, advertised Content-Length or None)."""

    def __init__(self):
        self.routes: dict[str, tuple[bytes, int | None]] = {}
        self.hits: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits.append(self.path)
                if self.path not in outer.routes:
                    self.send_error(404)
                    return
                body, length = outer.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)  # a Content-Length above len(body) is a truncated transfer
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def closed_port_url() -> str:
    """A loopback URL where nothing listens: the 'server down' case."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/file"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder) -> list[str]:
    return [f for f in os.listdir(folder) if f.endswith(".part")]


def test_good_file_is_verified_and_renamed(server, tmp_path):
    body = os.urandom(300_000)  # several read chunks
    server.routes["/good"] = (body, None)
    dest = tmp_path / "f.bin"
    download.fetch(download.RemoteFile("f.bin", (server.url + "/good",), sha(body)), str(dest), progress=False)
    assert dest.read_bytes() == body and leftovers(tmp_path) == []


def test_gzipped_file_is_checked_on_its_content(server, tmp_path):
    content = b"IDX bytes " * 1000
    server.routes["/a.gz"] = (gzip.compress(content, mtime=0), None)
    dest = tmp_path / "a.gz"
    download.fetch(download.RemoteFile("a.gz", (server.url + "/a.gz",), sha(content), gunzip=True), str(dest), progress=False)
    assert gzip.decompress(dest.read_bytes()) == content
    # The sum of the compressed bytes is not the content's: refused.
    server.routes["/b.gz"] = (gzip.compress(content, mtime=0), None)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download.fetch(
            download.RemoteFile("b.gz", (server.url + "/b.gz",), sha(gzip.compress(content, mtime=0)), gunzip=True),
            str(tmp_path / "b.gz"),
            progress=False,
        )
    assert not (tmp_path / "b.gz").exists() and leftovers(tmp_path) == []


def test_corrupt_file_is_refused_and_removed(server, tmp_path):
    good = b"the real bytes" * 100
    server.routes["/f"] = (good[:-1] + b"X", None)
    dest = tmp_path / "f"
    with pytest.raises(DownloadError) as err:
        download.fetch(download.RemoteFile("f", (server.url + "/f",), sha(good)), str(dest), progress=False)
    msg = str(err.value)
    assert server.url + "/f" in msg and sha(good) in msg and sha(good[:-1] + b"X") in msg and "by hand" in msg
    assert not dest.exists() and leftovers(tmp_path) == []


def test_truncated_transfer_is_refused(server, tmp_path):
    body = b"0123456789" * 1000
    server.routes["/t"] = (body[:4000], len(body))  # promises 10,000 bytes, sends 4,000 and closes
    with pytest.raises(DownloadError, match="/t: .*(truncated|IncompleteRead)"):
        download.fetch(download.RemoteFile("t", (server.url + "/t",), sha(body)), str(tmp_path / "t"), progress=False)
    assert not (tmp_path / "t").exists() and leftovers(tmp_path) == []


def test_server_down_and_http_errors_name_every_url_and_mirrors_are_tried_in_order(server, tmp_path):
    down = closed_port_url()
    missing = server.url + "/missing"
    with pytest.raises(DownloadError) as err:
        download.fetch(download.RemoteFile("f", (down, missing), "0" * 64), str(tmp_path / "f"), progress=False, timeout=5)
    msg = str(err.value)
    assert down in msg and missing in msg and "404" in msg and "0" * 64 in msg
    body = b"mirror two"
    server.routes["/ok"] = (body, None)
    dest = download.fetch(download.RemoteFile("f", (down, missing, server.url + "/ok"), sha(body)), str(tmp_path / "f"), progress=False)
    assert open(dest, "rb").read() == body and server.hits[-2:] == ["/missing", "/ok"]


def serve_mnist_fixture(server, monkeypatch) -> None:
    """Points the MNIST entry of the registry at the loopback server, which serves the committed excerpt."""
    files = []
    for name in sorted(os.listdir(MNIST_DIR)):
        raw = open(os.path.join(MNIST_DIR, name), "rb").read()
        server.routes["/mnist/" + name] = (raw, None)
        files.append(download.RemoteFile(name, (closed_port_url(), server.url + "/mnist/" + name), sha(gzip.decompress(raw)), gunzip=True))
    monkeypatch.setitem(download.DATASETS, "mnist", download.DataSet(tuple(files), manual="the loopback server"))


def test_locate_downloads_into_the_cache_once_then_reads_it(server, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(DATA_ENV, raising=False)
    serve_mnist_fixture(server, monkeypatch)
    with pytest.raises(FileNotFoundError, match="downloading is off"):
        locate("mnist", download=False)
    assert server.hits == []
    folder = locate("mnist", progress=False)
    assert folder == str(tmp_path / "cache" / "lld_jax" / "mnist") and len(server.hits) == 4
    data = load_mnist(val_size=100)  # no folder named: the cache
    ref = load_mnist(MNIST_DIR, val_size=100)
    np.testing.assert_array_equal(data.test.x, ref.test.x)
    np.testing.assert_array_equal(data.train.y, ref.train.y)
    assert len(server.hits) == 4  # read from the cache, not fetched again
    # The experiment's default data location goes the same way.
    cfg = mnist.Config(train_size=50, val_size=20, test_size=30, widths=(8,), epochs=1, progress=False)
    assert len(mnist.load(cfg).test.x) == 30 and len(server.hits) == 4


def test_explicit_folder_then_environment_then_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(DATA_ENV, DATA)
    assert locate("mnist") == os.path.join(DATA, "mnist")
    assert locate("caltech101") == os.path.join(DATA, "caltech101", "101_ObjectCategories")
    assert locate("mnist", str(tmp_path / "mine")) == str(tmp_path / "mine")  # an explicit folder is used as is
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_mnist(str(tmp_path / "mine"))  # and the loader names what is missing there
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as err:
        locate("caltech101")
    assert "empty" in str(err.value) and "cache" in str(err.value) and "not downloadable" in str(err.value)
    with pytest.raises(ValueError, match="unknown data set 'cifar'"):
        locate("cifar")


def test_command_line_without_data_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_:
        _cli.run(mnist.main, ["--no-download", "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data set 'mnist' not found") and "\n" not in err
    monkeypatch.setitem(download.DATASETS, "mnist", download.DataSet((download.RemoteFile("x.gz", (closed_port_url(),), "0" * 64),)))
    with pytest.raises(SystemExit) as exit_:
        _cli.run(mnist.main, ["--out", str(tmp_path / "run"), "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: could not fetch x.gz") and "\n" not in err
