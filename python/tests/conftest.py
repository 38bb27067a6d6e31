"""Fixtures: a real shardd daemon on a temp dir, and clients of it.

The daemon binary is ``$SHARDD_BIN`` (``cargo test`` sets it), else the
one ``cargo build`` leaves in ``target/``. Tests that need torch skip,
saying so, where torch is not installed.

Every daemon accepts one key on TCP, ``KEY_FILE``, as the nodes of one job
share theirs; ``SHARDD_AUTH_KEY_FILE`` names it, so every client of these
tests authenticates with it unless a test says otherwise.
"""

from __future__ import annotations

import atexit
import os
import pathlib
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

import shardd

# Tools installed beside this interpreter (ninja, for the DeepSpeed ops that
# build at first use) are found even when the environment is not activated.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

REPO = pathlib.Path(__file__).resolve().parents[2]


def _make_key() -> pathlib.Path:
    keys = tempfile.TemporaryDirectory(prefix="shardd-test-keys-")
    atexit.register(keys.cleanup)
    path = pathlib.Path(keys.name) / "tests.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f'id = "tests"\nsecret = "{secrets.token_hex(32)}"\n')
    return path


#: The key every test daemon accepts on TCP.
KEY_FILE = _make_key()
os.environ["SHARDD_AUTH_KEY_FILE"] = str(KEY_FILE)


def _binary(name: str) -> str:
    env = os.environ.get(f"SHARDD_{'BIN' if name == 'shardd' else 'CTL'}")
    if env:
        return env
    for profile in ("release", "debug"):
        path = REPO / "target" / profile / name
        if path.exists():
            return str(path)
    found = shutil.which(name)
    if found:
        return found
    pytest.skip(f"no {name} binary: run `cargo build` or set SHARDD_BIN")


class Daemon:
    """A shardd process on its own directory, on a Unix socket and loopback TCP."""

    def __init__(self, root: pathlib.Path, config: str = "", http: bool = False):
        self.root = root
        #: Where /metrics is served, if asked for.
        self.http: str | None = None
        if http:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.http = f"127.0.0.1:{s.getsockname()[1]}"
        self.socket = root / "shardd.sock"
        if "[auth]" not in config and "auth = " not in config:
            config += f"\n[auth]\nkeys = [{str(KEY_FILE)!r}]\n"
        (root / "shardd.toml").write_text("[storage]\nmin_free = 0\n[arena]\nsize = \"128MiB\"\n" + config)
        self.process: subprocess.Popen | None = None
        self.log = root / "shardd.log"
        self.start()

    def start(self) -> None:
        command = [
            _binary("shardd"),
            "--config", str(self.root / "shardd.toml"),
            "--data-dir", str(self.root / "data"),
            "--socket", str(self.socket),
            "--tcp", "127.0.0.1:0",
            "--http", self.http or "off",
            "--log-level", "warn",
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)
        try:
            self._wait_ready()
        except BaseException:
            # No fixture teardown follows a failed start: stop it here.
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"shardd exited: {self.log.read_text()}")
            try:
                with shardd.Client(self.unix) as client:
                    listen = client.status()["listen"]
                self.tcp = next(e for e in listen if e.startswith("tcp://"))
                return
            except (shardd.ConnectError, shardd.Disconnected):
                time.sleep(0.02)
        raise RuntimeError("shardd did not start within 30 s")

    @property
    def unix(self) -> str:
        return f"unix://{self.socket}"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    yield d
    d.stop()


@pytest.fixture
def http_daemon(tmp_path):
    """A daemon that also serves /metrics (at ``.http``)."""
    root = tmp_path / "http-node"
    root.mkdir()
    d = Daemon(root, http=True)
    yield d
    d.stop()


@pytest.fixture
def nodes(tmp_path):
    """Three daemons: the nodes of a job."""
    started = []
    for i in range(3):
        root = tmp_path / f"node{i}"
        root.mkdir()
        started.append(Daemon(root))
    yield started
    for d in started:
        d.stop()


@pytest.fixture
def client(daemon):
    with shardd.Client(daemon.unix) as c:
        yield c


@pytest.fixture(params=["unix", "tcp"])
def any_client(request, daemon):
    """A client over the Unix socket (zero copy) and one over TCP."""
    endpoint = daemon.unix if request.param == "unix" else daemon.tcp
    with shardd.Client(endpoint) as c:
        yield c


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="torch is not installed (pip install torch)")
