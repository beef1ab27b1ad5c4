"""A fault-injecting HTTP reverse proxy for the GCS emulator (127.0.0.1 only).

``FaultyProxy(upstream, seed=1, rate=0.10)`` forwards every request to ``upstream`` except a
seeded ``rate`` of them, which fail in one of three ways:

* ``503``          a ``503 Service Unavailable`` answer; the request never reaches the emulator;
* ``reset``        the connection is RESET (RST, ``SO_LINGER`` 0) before the request is forwarded;
* ``reset_after``  the request IS forwarded and takes effect, then the connection is reset instead
                   of answering (the nasty one: a retried DELETE then finds nothing, a retried
                   create-only upload finds its own object).

The choice is deterministic per request *identity*: a hash of (seed, method, path+query, how many
times this identity was seen), so concurrent clients interleaving differently still get the same
faults for the same requests. ``kinds`` restricts the fault kinds, ``enabled`` switches faults off
(setup and comparison traffic), ``stats`` counts what happened.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "host",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
}
KINDS = ("503", "reset", "reset_after")


class FaultyProxy:
    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 1,
        rate: float = 0.10,
        kinds: tuple[str, ...] = KINDS,
        weights: tuple[float, ...] = (0.5, 0.3, 0.2),
    ) -> None:
        u = urlsplit(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self.seed, self.rate = seed, rate
        self.kinds = tuple(k for k in KINDS if k in kinds)
        w = dict(zip(KINDS, weights, strict=True))
        total = sum(w[k] for k in self.kinds) or 1.0
        self.weights = [w[k] / total for k in self.kinds]
        self.enabled = True
        # forced faults: (kind, method, substring of path+query or body), each used once on its first match
        self.targets: list[tuple[str, str, str]] = []
        self.stats: Counter[str] = Counter()
        self.log: list[tuple[str, str, str]] = []  # (fault, method, path) of every injected fault
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- decisions --------------------------------------------------------------------------------

    def decide(self, method: str, path: str, body: bytes = b"") -> str | None:
        key = f"{method} {path}"
        with self._lock:
            self._seen[key] += 1
            nth = self._seen[key]
            self.stats["requests"] += 1
            self.requests.append((method, path))
            if not self.enabled:
                return None
            for t in list(self.targets):
                if t[1] == method and (t[2] in path or t[2].encode() in body):
                    self.targets.remove(t)
                    self.stats[t[0]] += 1
                    self.log.append((t[0], method, path))
                    return t[0]
        h = hashlib.sha256(f"{self.seed}|{key}|{nth}".encode()).digest()
        x = struct.unpack(">Q", h[:8])[0] / 2**64
        if x >= self.rate or not self.kinds:
            return None
        y = x / self.rate
        acc, kind = 0.0, self.kinds[-1]
        for k, w in zip(self.kinds, self.weights, strict=True):
            acc += w
            if y < acc:
                kind = k
                break
        with self._lock:
            self.stats[kind] += 1
            self.log.append((kind, method, path))
        return kind

    # -- server -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultyProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a) -> None:  # quiet
                return None

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _reset(self) -> None:
                try:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
                self.close_connection = True
                try:
                    self.connection.close()
                except OSError:
                    pass

            def _handle(self) -> None:
                body = self._body()
                fault = proxy.decide(self.command, self.path, body)
                if fault == "503":
                    msg = b'{"error": {"code": 503, "message": "injected by FaultyProxy"}}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                if fault == "reset":
                    self._reset()
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                    headers["Host"] = f"{proxy.upstream[0]}:{proxy.upstream[1]}"
                    if body or self.command in ("POST", "PUT", "PATCH"):
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    if fault == "reset_after":
                        self._reset()
                        return
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in HOP:
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle  # noqa: N815

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:  # a client gone: not news
                proxy.stats["client_errors"] += 1

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="faulty-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultyProxy:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()
