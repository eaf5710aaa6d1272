"""A loopback HTTP server with real Range support and per-id fault injection.

Serves registered media files at ``/{youtube_id}.{ext}`` on 127.0.0.1 (port 0), honouring
``Range`` (206, Content-Range, Accept-Ranges), and lets a test plan what each request for an id
gets: an HTTP error (optionally with Retry-After or a custom reason phrase), no answer at all
(the connection closed at once), a body that stalls (at once or after some bytes), a truncated
body (the connection closed cleanly), a reset connection (a TCP RST after some bytes) or a slow
trickle. It counts requests (with their arrival times) and the body bytes written per id.

Bytes are counted once ``sendall`` returns, i.e. once they are in the kernel's socket buffers:
a client that aborts a transfer has received fewer than counted (the server's send buffer is
kept small to bound the overcount).
"""
import dataclasses
import http.server
import os
import re
import socket
import struct
import sys
import threading
import time
from fractions import Fraction

import av
import numpy as np

CHUNK = 16 * 1024
SEND_BUFFER = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str                  # "status", "hangup", "stall", "truncate", "reset" or "trickle"
    status: int = 200
    reason: str | None = None  # the status line's phrase, which clients quote in their errors
    retry_after: str | None = None
    fraction: float = 0.5      # truncate: share of the body sent before the connection closes
    rate: float = 0.0          # trickle: body bytes per second
    after: int = 0             # stall, reset: body bytes sent first (at most the body)


def status(code, retry_after=None, reason=None):
    return Fault("status", code, reason=reason,
                 retry_after=None if retry_after is None else str(retry_after))


def stall(after=0):
    """Send the headers and `after` body bytes, then nothing (the connection stays open)."""
    return Fault("stall", after=after)


STALL = stall()
HANGUP = Fault("hangup")  # the connection is closed before any answer


def truncate(fraction=0.5):
    return Fault("truncate", fraction=fraction)


def reset(after=64 * 1024):
    """Send the headers and `after` body bytes, then abort the connection (a TCP RST, not a FIN)."""
    return Fault("reset", after=after)


def trickle(bytes_per_second):
    return Fault("trickle", rate=bytes_per_second)


@dataclasses.dataclass
class Stats:
    requests: int = 0
    bytes_sent: int = 0
    log: list = dataclasses.field(default_factory=list)  # (method, Range header or None, status; 0: no answer)
    cookies: list = dataclasses.field(default_factory=list)  # Cookie headers received
    times: list = dataclasses.field(default_factory=list)  # time.monotonic() at each request of `log`


class FaultServer:
    """``with FaultServer() as server: server.add(id, path); server.plan(id, status(429), ...)``.

    `tls`: an ``ssl.SSLContext`` (server side) to serve https instead (see `self_signed_tls`)."""

    def __init__(self, tls=None):
        self._files = {}
        self._plans = {}
        self._stats = {}
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.faults = self
        self.scheme = "https" if tls else "http"
        if tls:  # the handshake happens in the request's thread, on its first read
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def base_url(self):
        return f"{self.scheme}://127.0.0.1:{self._httpd.server_address[1]}"

    def url_template(self, ext="mp4"):
        return f"{self.base_url}/{{youtube_id}}.{ext}"

    def add(self, youtube_id, path):
        with self._lock:
            self._files[youtube_id] = str(path)

    def plan(self, youtube_id, *once, then=None):
        """Requests for `youtube_id` get the faults in `once` in turn, then `then` (None: served normally)."""
        with self._lock:
            self._plans[youtube_id] = (list(once), then)

    def stats(self, youtube_id):
        with self._lock:
            s = self._stats.get(youtube_id, Stats())
            return Stats(s.requests, s.bytes_sent, list(s.log), list(s.cookies), list(s.times))

    @property
    def total_requests(self):
        with self._lock:
            return sum(s.requests for s in self._stats.values())

    def reset_stats(self):
        with self._lock:
            self._stats.clear()

    def _next_fault(self, youtube_id):
        with self._lock:
            once, then = self._plans.get(youtube_id, ([], None))
            return once.pop(0) if once else then

    def _record(self, youtube_id, request, code):
        with self._lock:
            s = self._stats.setdefault(youtube_id, Stats())
            s.requests += 1
            s.log.append((request.command, request.headers.get("Range"), code))
            s.times.append(time.monotonic())
            if request.headers.get("Cookie"):
                s.cookies.append(request.headers["Cookie"])

    def _count(self, youtube_id, n):
        with self._lock:
            self._stats.setdefault(youtube_id, Stats()).bytes_sent += n

    def _file(self, youtube_id):
        with self._lock:
            return self._files.get(youtube_id)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], OSError):  # a client gone, a TLS handshake refused: no news
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body):
        faults = self.server.faults
        m = re.fullmatch(r"/([A-Za-z0-9_-]+)\.\w+", self.path.split("?")[0])
        youtube_id = m.group(1) if m else None
        path = faults._file(youtube_id)
        fault = faults._next_fault(youtube_id)
        range_header = self.headers.get("Range")
        if fault and fault.kind == "hangup":
            faults._record(youtube_id, self, 0)
            self.close_connection = True
            return
        if path is None or (fault and fault.kind == "status"):
            code = fault.status if fault and fault.kind == "status" else 404
            faults._record(youtube_id, self, code)
            return self._error(code, fault)
        size = os.path.getsize(path)
        first, last = _byte_range(range_header, size)
        if first is None:
            faults._record(youtube_id, self, 416)
            return self._error(416, None, {"Content-Range": f"bytes */{size}"})
        code = 206 if range_header else 200
        faults._record(youtube_id, self, code)
        self.send_response(code)
        self.send_header("Content-Type", "video/mp4" if path.endswith(".mp4") else _content_type(path))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(last - first + 1))
        if code == 206:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        if body:
            self._body(youtube_id, path, first, last, fault)

    def _error(self, code, fault, headers=None):
        payload = f"error {code}\n".encode()
        self.send_response(code, fault.reason if fault else None)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if fault and fault.retry_after is not None:
            self.send_header("Retry-After", fault.retry_after)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _body(self, youtube_id, path, first, last, fault):
        faults = self.server.faults
        kind = fault.kind if fault else None
        stop = last + 1
        if kind == "truncate":
            stop = first + int((last + 1 - first) * fault.fraction)
            self.close_connection = True
        elif kind in ("stall", "reset"):
            stop = min(stop, first + fault.after)
            self.close_connection = True
        chunk = max(1, min(CHUNK, int(fault.rate / 10))) if kind == "trickle" else CHUNK
        try:
            with open(path, "rb") as f:
                f.seek(first)
                pos = first
                while pos < stop and not faults.stopping.is_set():
                    data = f.read(min(chunk, stop - pos))
                    self.wfile.write(data)
                    faults._count(youtube_id, len(data))
                    pos += len(data)
                    if kind == "trickle":
                        time.sleep(len(data) / fault.rate)
            self.wfile.flush()
            if kind == "stall":
                faults.stopping.wait(120)
            elif kind == "reset":
                # SO_LINGER 0: close() sends a RST, the client reads ECONNRESET
                self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.request.close()
        except OSError:  # the client went away (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError)
            self.close_connection = True


def self_signed_tls(directory):
    """A server-side SSLContext with a fresh self-signed certificate for 127.0.0.1 (files in `directory`)."""
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


def _byte_range(header, size):
    """(first, last) byte of the requested range; (None, None) when unsatisfiable."""
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if not m or not (m.group(1) or m.group(2)):
        return 0, size - 1
    if not m.group(1):
        return max(0, size - int(m.group(2))), size - 1
    first = int(m.group(1))
    last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    return (first, last) if first < size and first <= last else (None, None)


def _content_type(path):
    return {".webm": "video/webm", ".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t"}.get(
        os.path.splitext(path)[1], "application/octet-stream")


def make_video(path, seconds, *, fps=10, width=64, height=48, gop_seconds=2.0, faststart=True):
    """An H.264 mp4 (at least 64x16) whose frame i shows i in binary: 16 black/white 8x8 blocks at the top."""
    n = int(round(seconds * fps))
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        gop = max(1, int(round(gop_seconds * fps)))
        stream.options = {"preset": "ultrafast", "crf": "18", "threads": "1", "g": str(gop),
                          "keyint_min": str(gop), "sc_threshold": "0"}
        rng = np.random.default_rng(0)
        noise = rng.integers(0, 255, (height, width, 3), np.uint8)
        for i in range(n):
            img = np.roll(noise, i, axis=1)
            for bit in range(16):
                img[8 * (bit // 8):8 * (bit // 8) + 8, 8 * (bit % 8):8 * (bit % 8) + 8] = 255 * ((i >> bit) & 1)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return str(path)


def frame_index(frame):
    """The index make_video drew into a decoded frame."""
    img = frame.to_ndarray(format="gray")
    return sum(1 << bit for bit in range(16)
               if img[8 * (bit // 8) + 2:8 * (bit // 8) + 6, 8 * (bit % 8) + 2:8 * (bit % 8) + 6].mean() > 128)
