"""Test support on loopback: a forward proxy (CONNECT and absolute-URI requests) that records
what it was asked for, and a TLS front that terminates TLS for a plain HTTP server."""

import select
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

IDLE_SECONDS = 10.0


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate (and its key) for 127.0.0.1 that no CA vouches for."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def pipe(one: socket.socket, other: socket.socket) -> None:
    """Copy bytes both ways until either side closes or both stay idle."""
    peers = {one: other, other: one}
    while True:
        ready = [s for s in peers if isinstance(s, ssl.SSLSocket) and s.pending()]
        ready = ready or select.select(list(peers), [], [], IDLE_SECONDS)[0]
        if not ready:
            return
        for sock in ready:
            data = sock.recv(65536)
            if not data:
                return
            peers[sock].sendall(data)


def _named(header: bytes, name: bytes) -> bool:
    return header.split(b":", 1)[0].strip().lower() == name


def _hop(header: bytes) -> bool:
    """A hop-by-hop header the proxy must not pass on."""
    return _named(header, b"connection") or _named(header, b"proxy-connection")


class _Threaded(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def _serving(handler: type[socketserver.BaseRequestHandler]) -> Iterator[_Threaded]:
    server = _Threaded(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class ForwardProxy:
    """An HTTP forward proxy; `seen` holds each request line it received."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.url = ""

    @contextmanager
    def running(self) -> Iterator["ForwardProxy"]:
        """Serve on a free loopback port while the block runs."""
        seen = self.seen

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline().decode("latin-1").strip()
                seen.append(line)
                method, target, version = line.split(" ")
                headers = b""
                while (header := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                    headers += header
                if method == "CONNECT":
                    host, port = target.rsplit(":", 1)
                    with socket.create_connection((host, int(port))) as upstream:
                        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        pipe(self.connection, upstream)
                    return
                # one request per connection: simple, and requests reconnects when it must
                kept = [h for h in headers.splitlines(keepends=True) if not _hop(h)]
                length = next(
                    (int(h.split(b":")[1]) for h in kept if _named(h, b"content-length")), 0
                )
                parts = urlsplit(target)
                origin = parts.path + (f"?{parts.query}" if parts.query else "")
                request = f"{method} {origin} {version}\r\n".encode() + b"".join(kept)
                request += b"Connection: close\r\n\r\n" + self.rfile.read(length)
                with socket.create_connection((parts.hostname, parts.port or 80)) as upstream:
                    upstream.sendall(request)
                    pipe(self.connection, upstream)

        with _serving(Handler) as server:
            self.url = f"http://127.0.0.1:{server.server_address[1]}"
            yield self


@contextmanager
def tls_front(cert: Path, key: Path, port: int) -> Iterator[str]:
    """An https:// URL on loopback whose connections are relayed, decrypted, to `port`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                tls = context.wrap_socket(self.request, server_side=True)
            except ssl.SSLError:
                return  # a client that does not trust the certificate hangs up
            with tls, socket.create_connection(("127.0.0.1", port)) as upstream:
                pipe(tls, upstream)

    with _serving(Handler) as server:
        yield f"https://127.0.0.1:{server.server_address[1]}"
