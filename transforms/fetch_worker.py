"""One yt-dlp fetch in a child process: ``python -m transforms.fetch_worker`` < job.json.

Started by transforms.fetch in its own process group (a timeout kills it with the ffmpeg it runs);
should the parent die, a watcher thread kills the group. The job (JSON on stdin) holds the URL, the
wanted window (or null), the YoutubeDL parameters, the socket timeout and the parent's pid; the
report is one JSON line on stdout. Everything else goes to stderr, which the parent points at the
job's log file: yt-dlp's messages prefixed ``yt-dlp: ``, ffmpeg's as ffmpeg writes them.

ffmpeg, which yt-dlp runs for ranged downloads, gets a read timeout (``-rw_timeout``, the socket
timeout; added when ``--ytdlp-opt external_downloader_args`` replaced ours), but says only
"partial file" or "Invalid data" when a transfer stalls or is reset part-way. So unless a proxy
is configured (yt-dlp then points ffmpeg at it), its HTTP(S) requests go through a loopback
relay (ffmpeg's ``-http_proxy``; a CONNECT tunnel for https, so TLS stays end to end) that notes
how each transfer from the media host ended: a refused or failed connection, a reset, or no data
for half the socket timeout or more when ffmpeg gave up. The report carries the last such fault,
the media host, and the meaningful lines ffmpeg wrote.
"""
import json
import os
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
import urllib.request

from transforms import compat

YTDLP_PREFIX = "yt-dlp: "
_PARTIAL_REFUSED = re.compile(r"cannot be partially downloaded|downloading the video partially", re.I)
_FFMPEG_EXIT = re.compile(r"ffmpeg exited with code (-?\d+)", re.I)
# ffmpeg's lines that say nothing of the cause: summaries after the error, statistics, progress
_FFMPEG_NOISE = re.compile(r"^(?:Conversion failed!|Exiting (?:normally|with exit code).*|Terminating thread with return"
                           r" code.*|Task finished with error code.*|frame=.*|size=.*|Press \[q\].*|Statistics:.*"
                           r"|Latency:.*|Input file #.*|Output file #.*|Total: .*|\s*(?:Input|Output) stream #.*"
                           r"|.*muxing overhead:.*|All streams finished.*|video:\S+ audio:.*)$", re.I)
_PREFIX = re.compile(r"^(?:\[[^\]]*@ 0x[0-9a-f]+\] ?)+")  # "[http @ 0x55d0...] "
_RELAY_BUFFER = 64 * 1024


class _Logger:
    def debug(self, msg):
        pass

    info = debug

    def warning(self, msg):
        for line in str(msg).splitlines():
            if line.strip():
                print(YTDLP_PREFIX + line.strip(), file=sys.stderr, flush=True)

    error = warning


def host_of(url):
    """host[:port] of a URL, without user info; "" when there is none."""
    try:
        parts = urllib.parse.urlsplit(url)
        return parts.hostname and (parts.hostname + (f":{parts.port}" if parts.port else ""))
    except ValueError:
        return ""


def describe_os_error(e):
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the name ({e.strerror or e})"
    if isinstance(e, TimeoutError) or isinstance(e, socket.timeout):
        return "timed out"
    return e.strerror or str(e) or type(e).__name__


class Relay:
    """A loopback HTTP proxy between ffmpeg and the media host that notes how transfers end.

    Only faults are kept (``faults``, in order): ``connect`` (the host could not be reached),
    ``reset`` (the host reset the connection) and ``stall`` (ffmpeg closed the connection while the
    relay had waited ``idle`` s, at least half of `timeout`, for the host's next bytes, and the
    answer was not complete). ``bytes`` is what the host had sent on that connection; for plain
    HTTP also ``body`` and ``length`` (its Content-Length). A host that simply closes is passed on
    as a close; ffmpeg then says whether the body was short.
    """

    def __init__(self, timeout):
        self.timeout = timeout
        self.faults = []
        self._active = 0
        self._lock = threading.Condition()
        self._listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, name="relay", daemon=True).start()

    def settle(self, timeout=5.0):
        """Wait (at most `timeout` s) until every connection ffmpeg opened is done with."""
        with self._lock:
            self._lock.wait_for(lambda: self._active == 0, timeout)

    @property
    def url(self):
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def close(self):
        """Accept no more connections (those open run to their end)."""
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (Linux)
        except OSError:
            pass
        self._listener.close()

    def last_fault(self):
        with self._lock:
            return dict(self.faults[-1]) if self.faults else None

    def _fault(self, **fault):
        with self._lock:
            self.faults.append(fault)

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._active += 1
            threading.Thread(target=self._serve, args=(client,), name="relay-conn", daemon=True).start()

    def _serve(self, client):
        upstream = None
        try:
            head = _read_head(client)
            if head is None:
                return
            line, _, rest = head.partition(b"\r\n")
            method, target, version = line.decode("latin-1").split(" ", 2)
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                host, port, request = host.strip("[]"), int(port), None
            else:
                parts = urllib.parse.urlsplit(target)
                if parts.scheme != "http" or not parts.hostname:
                    return client.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                host, port = parts.hostname, parts.port or 80
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                request = f"{method} {path} {version}\r\n".encode("latin-1") + rest
            name = host if port in (80, 443) else f"{host}:{port}"
            try:
                upstream = socket.create_connection((host, port), timeout=self.timeout)
            except OSError as e:
                self._fault(event="connect", host=name, error=describe_os_error(e), bytes=0)
                return client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            upstream.settimeout(None)
            if request is None:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream.sendall(request)
            self._pump(client, upstream, name, _Response() if request is not None else None)
        except (OSError, ValueError):
            pass
        finally:
            for s in (client, upstream):
                if s is not None:
                    s.close()
            with self._lock:
                self._active -= 1
                self._lock.notify_all()

    def _pump(self, client, upstream, name, response):
        """Copy both ways until either side closes. `response` follows a plain HTTP answer (None in a
        tunnel): once its body is complete, the host owes nothing more and an idle wait is no stall."""
        received, waiting_since = 0, time.monotonic()
        while True:
            ready, _, _ = select.select([client, upstream], [], [], 1.0)
            if upstream in ready:
                try:
                    data = upstream.recv(_RELAY_BUFFER)
                except OSError as e:
                    self._fault(event="reset", host=name, error=describe_os_error(e), bytes=received,
                                **(response.progress() if response else {}))
                    # pass the reset on: ffmpeg sees what the relay saw
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if not data:
                    return
                client.sendall(data)
                received += len(data)
                if response is not None:
                    response.feed(data)
                waiting_since = time.monotonic()
            if client in ready:
                try:
                    data = client.recv(_RELAY_BUFFER)
                except OSError:
                    data = b""
                if not data:
                    idle = time.monotonic() - waiting_since
                    if idle >= self.timeout / 2 and not (response and response.complete):
                        self._fault(event="stall", host=name, idle=round(idle, 1), bytes=received,
                                    **(response.progress() if response else {}))
                    return
                upstream.sendall(data)


class _Response:
    """How much of a plain HTTP answer has passed: complete once its Content-Length is in."""

    def __init__(self):
        self._head, self._length, self._body = b"", None, 0

    def feed(self, data):
        if self._length is not None:
            self._body += len(data)
            return
        self._head += data
        if b"\r\n\r\n" in self._head:
            head, _, body = self._head.partition(b"\r\n\r\n")
            m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
            self._length, self._body = (int(m.group(1)) if m else -1), len(body)
        elif len(self._head) > 64 * 1024:
            self._length = -1

    @property
    def complete(self):
        return self._length is not None and 0 <= self._length <= self._body

    def progress(self):
        """{"body": bytes of the body passed, "length": its Content-Length} as far as known."""
        if self._length is None:
            return {}
        return {"body": self._body, **({"length": self._length} if self._length >= 0 else {})}


def _read_head(sock, limit=64 * 1024):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk or len(data) > limit:
            return None
        data += chunk
    return data


def _proxied(params):
    """Whether yt-dlp or the environment sends ffmpeg through a proxy (then the relay stays out)."""
    return bool(params.get("proxy")) or any(urllib.request.getproxies().get(k) for k in ("http", "https", "all"))


def fetch(job):
    import yt_dlp
    from yt_dlp.postprocessor import PostProcessor
    from yt_dlp.utils import download_range_func

    class NoteFormats(PostProcessor):
        """Before the download: the media URLs yt-dlp chose."""

        def run(self, info):
            urls[:] = [f.get("url") or "" for f in info.get("requested_formats") or [info]]
            return [], info

    if job["params"].get("ffmpeg_location"):
        # yt-dlp chooses its ffmpeg downloader for ranges by probing PATH unless this is set, as its CLI
        # does (yt-dlp #2191); without it, a ranged fetch falls back to a full download
        compat.set_ytdlp_ffmpeg_location(job["params"]["ffmpeg_location"])
    params, timeout = dict(job["params"]), job.get("socket_timeout") or job["params"].get("socket_timeout") or 30
    args = dict(params.get("external_downloader_args") or {})
    ffmpeg_i = list(args.get("ffmpeg_i", []))
    if "-rw_timeout" not in ffmpeg_i:  # kept when --ytdlp-opt external_downloader_args replaces ours
        ffmpeg_i += ["-rw_timeout", str(int(timeout * 1e6))]
    relay = None
    if not _proxied(params):
        relay = Relay(timeout)
        ffmpeg_i += ["-http_proxy", relay.url]
        for key in ("no_proxy", "NO_PROXY"):  # ffmpeg would bypass the relay for these hosts
            os.environ.pop(key, None)
    params["external_downloader_args"] = {**args, "ffmpeg_i": ffmpeg_i}
    urls, stage, segment, log_start = [], "extract", job["window"] is not None, 0
    try:
        ydl = yt_dlp.YoutubeDL({**params, "logger": _Logger()})
        ydl.add_post_processor(NoteFormats(), when="before_dl")
        info = ydl.extract_info(job["url"], download=False, process=False)  # the one extraction
        stage = "download"
        if segment:
            ydl.params["download_ranges"] = download_range_func(None, [tuple(job["window"])])
        log_start = _log_size(job["log"])
        try:
            done = ydl.process_ie_result(info, download=True)  # picks the format, downloads it
        except yt_dlp.utils.DownloadError as e:
            if not (segment and _PARTIAL_REFUSED.search(str(e))):
                raise
            del ydl.params["download_ranges"]
            segment = False
            log_start = _log_size(job["log"])
            done = ydl.process_ie_result(info, download=True)
    except Exception as e:
        return _error(e, stage, job, log_start, segment, urls, relay)
    return {"ok": True, "path": done["requested_downloads"][0]["filepath"], "format_id": done.get("format_id"),
            "segment": segment, "version": yt_dlp.version.__version__}


def _log_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _error(exc, stage, job, log_start, segment, urls, relay):
    message = str(exc)
    http = _http_error(exc)
    report = {"ok": False, "stage": stage, "message": message, "segment": segment and stage == "download",
              "host": next((h for h in map(host_of, urls) if h), None) or host_of(job["url"]),
              "http_status": http.status if http else None,
              "retry_after": http.response.headers.get("Retry-After") if http else None}
    m = _FFMPEG_EXIT.search(message)
    if m:
        if relay:
            relay.settle()
        report.update(tool="ffmpeg", exit_code=int(m.group(1)), lines=ffmpeg_lines(job["log"], log_start),
                      relay=relay is not None, transfer=relay.last_fault() if relay else None)
    return report


def ffmpeg_lines(log_path, start=0, keep=12):
    """The last `keep` meaningful lines ffmpeg wrote to the log from byte `start` on, prefixes stripped."""
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    lines = []
    for line in text.replace("\r", "\n").splitlines():
        line = _PREFIX.sub("", line.strip()).strip()
        if line and not line.startswith(YTDLP_PREFIX) and not _FFMPEG_NOISE.match(line):
            lines.append(line)
    return lines[-keep:]


def _http_error(exc):
    """The HTTP error (with status and response) behind a yt-dlp exception, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(getattr(exc, "status", None), int) and getattr(exc, "response", None) is not None:
            return exc
        exc_info = getattr(exc, "exc_info", None) or (None, None)
        exc = getattr(exc, "cause", None) or exc_info[1] or exc.__cause__ or exc.__context__
    return None


def watch_parent(parent_pid, interval=0.5):
    """Kill this process group (the worker, its ffmpeg and deno) once `parent_pid` is no longer the
    parent; only the worker itself when it does not lead its group (started by hand)."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(interval)
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def main():
    job = json.load(sys.stdin)
    watch_parent(job.get("parent_pid", os.getppid()))
    report = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints go to the log, not into the report
    report.write(json.dumps(fetch(job)) + "\n")
    report.flush()


if __name__ == "__main__":
    main()
