"""Fetch a clip's source video from YouTube (or any yt-dlp URL) with yt-dlp, only the range needed.

Each attempt runs ``transforms.fetch_worker`` in a child process in its own process group, so the
hard per-clip bound (``clip_timeout``) can kill it together with the ffmpeg that yt-dlp starts for
ranged downloads. Failures are classified into a small taxonomy (``unavailable``, ``rate_limited``,
``network``, ``failed``); transient ones are retried with exponential backoff and jitter (equal jitter
for rate limits, so a 429 always waits), honouring Retry-After. Per worker process, a rate governor
paces requests (``fetch_rate``, halved on every 429, held for a Retry-After, recovered additively),
a breaker stops fetching after repeated YouTube bot checks, and one yt-dlp cache dir (removed at exit)
serves every fetch.

Downloads go under the caller's ``workdir``: one private directory per attempt, removed on every
path; only the fetched media file is moved up into ``workdir`` on success.
"""
import atexit
import dataclasses
import email.utils
import importlib.util
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from transforms.optionfields import invalid, option, plain

UNAVAILABLE, RATE_LIMITED, NETWORK, CORRUPT, FAILED = "unavailable", "rate_limited", "network", "corrupt", "failed"

YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]{11}")
BOT_CHECK_REASON_PREFIX = "YouTube bot check: fetching stopped"
INSTALL_HINT = "pip install 'yt-dlp[default,deno]' imageio-ffmpeg"

_FREE_RATE_GUESS = 2.0   # clips/s assumed when fetch_rate is 0 (unlimited) and a 429 arrives
_MIN_RATE = 1 / 60       # the governor never paces slower than one request a minute
_RECOVERY_STEPS = 10     # successes needed to climb from 0 back to the ceiling
_MAX_HOLD = 15 * 60      # the longest a Retry-After pauses a worker

log = logging.getLogger(__name__)


def _normalized(value, _):
    from transforms import storage  # here: the fetch worker imports this module, not the storage clients
    return storage.normalize(value) if value else None


def _ytdlp_opts(value, _):
    """--ytdlp-opt KEY=VALUE flags (a list) or a YAML mapping, as FetchOptions.ytdlp_opts."""
    return tuple(value.items()) if isinstance(value, dict) else parse_ytdlp_opts(value)


@dataclasses.dataclass(frozen=True)
class FetchOptions:
    """The fetch group (yt-dlp's side of it); picklable.

    ``ytdlp_opts`` are YoutubeDL parameters (the Python API names, e.g. ``extractor_args``,
    ``http_headers``, ``cachedir``), merged last: they override the parameters set here.
    ``ffmpeg`` and ``js_runtime`` default to the binaries shipped by the imageio-ffmpeg and deno
    pip packages. ``backoff_base``/``backoff_cap`` (seconds) shape the retry delays; the cap also
    bounds a Retry-After waited for within a clip. ``segment=False`` always downloads whole sources.
    ``cache_dir`` is yt-dlp's cache (YouTube player code and solved challenges, else fetched again
    by every fetch): None means one temp dir per worker process, removed at exit
    (``ytdlp_opts`` ``cachedir=false`` disables it). A field whose value its ``valid`` rule refuses
    makes the options invalid (ValueError naming every such field).
    """
    url_template: str = option("https://www.youtube.com/watch?v={youtube_id}",
                               "URL of a clip's video; {youtube_id} is replaced by the validated id")
    max_height: int = option(720, "tallest video format to download (mp4, then webm)", valid=lambda v: v >= 1)
    pad: float = option(2.0, "seconds fetched before and after each annotated segment", name="fetch_pad",
                        valid=lambda v: v >= 0)
    cookies: str | None = option(None, "Netscape cookies file, local or any URL (gs://...), for YouTube's "
                                       "'confirm you're not a bot' checks", kind=str, convert=_normalized)
    proxy: str | None = option(None, "proxy URL for yt-dlp and ffmpeg", kind=str)
    ytdlp_opts: tuple = option({}, "extra yt-dlp option KEY=VALUE (Python API names, JSON values); repeatable; "
                                   "overrides ours", name="ytdlp_opt", convert=_ytdlp_opts)
    fetch_rate: float = option(0.0, "most clips per second per worker process (0 = no limit); halved on each "
                                    "HTTP 429, then recovered", valid=lambda v: v >= 0)
    retries: int = option(3, "retries of network and HTTP 429 failures, with backoff", valid=lambda v: v >= 0)
    socket_timeout: float = option(30.0, "seconds without data before a transfer fails", valid=lambda v: v > 0)
    clip_timeout: float = option(300.0, "hard bound in seconds on one clip's fetch, retries included; then it is "
                                        "killed, recorded network", valid=lambda v: v > 0)
    bot_check_limit: int = option(5, "consecutive bot checks after which a worker stops fetching",
                                  valid=lambda v: v >= 1)
    backoff_base: float = plain(2.0, valid=lambda v: v >= 0)
    backoff_cap: float = plain(60.0, valid=lambda v: v >= 0)
    ffmpeg: str | None = None
    js_runtime: str | None = None
    segment: bool = True
    cache_dir: str | None = None

    def __post_init__(self):
        try:
            if "\0" not in self.url_template.format(youtube_id="\0"):
                raise ValueError("it lacks {youtube_id}")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"url template {self.url_template!r}: {e}") from None
        try:
            json.dumps(dict(self.ytdlp_opts))
        except (TypeError, ValueError) as e:
            raise ValueError(f"ytdlp_opts must be (key, JSON value) pairs: {e}") from None
        bad = invalid(self)
        if bad:
            raise ValueError(f"invalid fetch options: {', '.join(bad)}")


@dataclasses.dataclass
class FetchResult:
    """A fetched source. ``bytes_fetched`` is the size of the media file yt-dlp wrote (measured on
    the client); the network reads of a ranged fetch are a little higher (container index, read-ahead).
    ``fetch_range`` is the padded (start, end) requested, None for a full download."""
    path: str
    offset: float
    fetch_range: tuple | None
    bytes_fetched: int
    format_id: str
    ytdlp_version: str
    attempts: int
    segment: bool
    seconds: float


class FetchError(Exception):
    def __init__(self, status, reason, permanent=False, attempts=0):
        super().__init__(status, reason, permanent, attempts)
        self.status, self.reason, self.permanent, self.attempts = status, reason, permanent, attempts

    def __str__(self):
        return f"{self.status}: {self.reason}"


class BotCheckStop(FetchError):
    """A fetch refused without a request: the worker's bot-check breaker is open."""


# The Beam counter of the clips a worker refused to fetch after repeated bot checks.
BOT_CHECK_COUNTER = ("fetch", "bot_check_stopped")


@dataclasses.dataclass(frozen=True)
class Failure:
    """One attempt's failure as classified: whether to retry now (`transient`), or ever (`permanent` is never)."""
    status: str
    reason: str
    permanent: bool = False
    transient: bool = False
    bot_check: bool = False


@dataclasses.dataclass(frozen=True)
class Window:
    """A fetch serving several ranges of one id: ``fetch(id, w.start, w.end, ...)`` covers all ``w.ranges``."""
    start: float
    end: float
    ranges: tuple


def windows(ranges, pad, max_merge_gap=30.0):
    """Group the (start, end) ranges of one youtube id into fetch windows.

    Ranges whose padded spans overlap or lie at most `max_merge_gap` seconds apart share a window.
    """
    out = []
    for start, end in sorted(set((float(s), float(e)) for s, e in ranges)):
        if out and max(0.0, start - pad) - (out[-1].end + pad) <= max_merge_gap:
            last = out[-1]
            out[-1] = Window(last.start, max(last.end, end), last.ranges + ((start, end),))
        else:
            out.append(Window(start, end, ((start, end),)))
    return out


def parse_ytdlp_opts(pairs):
    """``["KEY=VALUE", ...]`` from ``--ytdlp-opt`` as FetchOptions.ytdlp_opts; values are JSON when they parse."""
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--ytdlp-opt {pair!r}: expected KEY=VALUE")
        try:
            value = json.loads(value)
        except ValueError:
            pass
        out.append((key.strip(), value))
    return tuple(out)


def source_url(url_template, youtube_id):
    if not isinstance(youtube_id, str) or not YOUTUBE_ID.fullmatch(youtube_id):
        raise FetchError(FAILED, f"invalid YouTube id {youtube_id!r}: expected 11 characters of [A-Za-z0-9_-]")
    return url_template.format(youtube_id=youtube_id)


def format_selector(max_height):
    """No taller than `max_height`: mp4, then webm, then anything, H.264 first at each step;
    failing those, the smallest format taller than that (never the biggest)."""
    fits, taller = f"[height<=?{max_height}]", f"[height>{max_height}]"
    steps = ((f"bv*{fits}[ext=mp4]", "+ba[ext=m4a]"), (f"b{fits}[ext=mp4]", ""),
             (f"bv*{fits}[ext=webm]", "+ba[ext=webm]"), (f"b{fits}[ext=webm]", ""),
             (f"bv*{fits}", "+ba"), (f"b{fits}", ""), (f"wv*{taller}", "+ba"), (f"w{taller}", ""))
    return "/".join(f"{video}{codec}{audio}" for video, audio in steps
                    for codec in (("",) if "webm" in video else ("[vcodec^=avc1]", "")))


# --- failure taxonomy -------------------------------------------------------------------------

_BOT_CHECK = re.compile(r"confirm you.?re not a bot|captcha", re.I)
_SESSION_LIMIT = re.compile(r"try again later|rate.limited by YouTube", re.I)
_UNAVAILABLE = [(sub, re.compile(rx, re.I)) for sub, rx in (
    ("account closed", r"account associated with this video has been terminated"
                       r"|closed their YouTube account|account .{0,40}(?:terminated|suspended)"),
    ("country block", r"not made this video available in your country|blocked it in your country"
                      r"|not available in your country|geo.?restricted"),
    ("copyright", r"copyright|duplicate of a previously uploaded video"),
    ("spam", r"policy on spam"),
    ("nudity", r"policy on nudity"),
    ("harassment and bullying", r"policy on harassment"),
    ("harmful content", r"policy on (?:harmful|violent)"),
    ("terms of service", r"Terms of Service"),
    ("community guidelines", r"Community Guidelines"),
    ("removed by the uploader", r"removed by the (?:user|uploader)"),
    ("private", r"private video|video is private"),
    ("age restricted (sign-in)", r"confirm your age|age.?restricted|inappropriate for some users"),
    ("sign-in required", r"sign in to view|login required|requires authentication|login details are needed"
                         r"|only available for registered users"),
    ("members only", r"members.only|Join this channel|Premium members"),
    ("unavailable", r"This video is not available|This video does not exist|Video unavailable"
                    r"|This video has been removed|This video is unavailable"),
)]
_NETWORK = [(sub, re.compile(rx, re.I)) for sub, rx in (
    ("truncated", r"incomplete ?read|content too short|bytes read, \d+ more expected|did not get any data blocks"
                  r"|ends prematurely|partial file|empty file"),
    ("timed out", r"timed? ?out|timeout"),
    ("connection closed", r"remote ?disconnected|closed connection without response"),
    ("connection reset", r"connection (?:reset|aborted)|broken pipe"),
    ("connection refused", r"connection refused"),
    ("DNS", r"name resolution|name or service not known|nodename nor servname"),
    ("TLS", r"\bssl\b|eof occurred in violation"),
    ("unreachable", r"network is unreachable|no route to host"),
    ("I/O error", r"input/output error|unable to download video data|giving up after"),
)]
_HTTP_STATUS = re.compile(r"HTTP Error (\d{3})", re.I)
# what each network failure means, said of the host (`network_reason`)
_NETWORK_WHAT = {
    "truncated": "{host} ended the transfer early",
    "timed out": "no data for {timeout:g} s from {host}",
    "connection reset": "{host} reset the connection",
    "connection closed": "{host} closed the connection without an answer",
    "connection refused": "{host} refused the connection",
    "DNS": "cannot resolve {host}",
    "TLS": "TLS failure with {host}",
    "unreachable": "{host} is unreachable",
    "I/O error": "read error from {host}",
}
# ffmpeg's own lines (yt-dlp runs ffmpeg for ranged downloads), most telling first
_FFMPEG_HTTP = re.compile(r"HTTP error (\d{3})|Server returned (\d{3})|Server returned ([45])XX", re.I)
_FFMPEG_NETWORK = [(sub, re.compile(rx, re.I)) for sub, rx in (
    ("truncated", r"Stream ends prematurely|end of file while|unexpected eof|non-properly terminated"),
    ("connection closed", r"Error reading HTTP response: End of file"),
    ("timed out", r"timed out"),
    ("connection reset", r"Connection reset|Broken pipe|Connection aborted"),
    ("connection refused", r"Connection refused"),
    ("DNS", r"Failed to resolve hostname|name resolution|Name or service not known|No address associated"),
    ("unreachable", r"Network is unreachable|No route to host|Host is unreachable"),
    ("TLS", r"\bTLS\b|\bSSL\b|GnuTLS|certificate|Error in the (?:pull|push) function|handshake"),
)]
_FFMPEG_CUT_SHORT = re.compile(r"partial file|Packet corrupt|corrupt input packet|Input/output error"
                               r"|Error during demuxing", re.I)
_FFMPEG_BAD_MEDIA = [re.compile(rx, re.I) for rx in (  # most specific first
    r"moov atom not found|EBML header parsing failed|could not find codec|Unknown input format",
    r"Invalid data found when processing input", r"Invalid NAL|error while decoding|no (?:video|audio) stream",
    r"detected only with low score")]
_PRIMARY_PAGE = re.compile(r"Unable to download webpage", re.I)  # also the generic extractor's direct media URL
_YOUTUBE = re.compile(r"^\[youtube\b", re.I)  # a removed YouTube video answers 200 with a playability message


def classify(message, http_status=None, stage="extract"):
    """Map a yt-dlp error message (and HTTP status, if known) to a Failure.

    `stage` is "extract" (the page/API answer) or "download" (the media transfer after a successful
    extraction, where 403/404 mean a refused URL, not a removed video). Only a 403/404/410 on the
    primary page of a non-YouTube extractor proves a video gone; on YouTube's other requests (API,
    player) a 403 is a block and a 404/410 a failure, neither permanent.
    """
    detail = " ".join(str(message).replace("ERROR:", " ").split())
    detail = re.sub(r"\s*(?:\(caused by |;? ?please report this issue on ).*$", "", detail, flags=re.I)[:400]
    if _BOT_CHECK.search(detail):
        return Failure(RATE_LIMITED, f"bot check: {detail} (pass --cookies FILE)", bot_check=True)
    if _SESSION_LIMIT.search(detail):  # YouTube's "Video unavailable. This content isn't available, try again later"
        return Failure(RATE_LIMITED, f"session rate limit: {detail}")
    for sub, rx in _UNAVAILABLE:
        if rx.search(detail):
            return Failure(UNAVAILABLE, f"{sub}: {detail}", permanent=True)
    m = _HTTP_STATUS.search(detail)
    code = http_status or (int(m.group(1)) if m else None)
    if code == 429 or re.search(r"too many requests", detail, re.I):
        return Failure(RATE_LIMITED, f"HTTP 429: {detail}", transient=True)
    if code in (403, 404, 410) and stage == "extract":
        return _refused_extraction(code, detail)
    if code and 500 <= code < 600:
        return Failure(NETWORK, f"server error (HTTP {code}): {detail}", transient=True)
    if code and code >= 400:
        return Failure(FAILED, f"media request refused (HTTP {code}): {detail}")
    for sub, rx in _NETWORK:
        if rx.search(detail):
            return Failure(NETWORK, f"{sub}: {detail}", transient=True)
    return Failure(FAILED, detail or "unknown error")


def activity(stage, window):
    """What the fetch was doing, for a reason: reading the page, fetching a window or the whole source."""
    if stage == "extract":
        return "reading the video page"
    if window is None:
        return "fetching the whole source"
    return f"fetching [{window[0]:g}, {window[1]:g}] s"


def network_reason(sub, host, doing, detail="", timeout=None):
    """"<sub>: <what happened> while <doing>[: <detail>]", e.g. "timed out: no data for 10 s from
    r3.googlevideo.com while fetching [18, 40] s"."""
    what = _NETWORK_WHAT.get(sub, "{host}").format(host=host or "the server", timeout=timeout or 0)
    if sub == "timed out" and not timeout:
        what = f"{host or 'the server'} timed out"
    return f"{sub}: {what} while {doing}" + (f": {detail}" if detail else "")


def classify_report(report, window, socket_timeout):
    """The Failure for a fetch worker's failure report (see transforms.fetch_worker): the message
    (and HTTP status) for yt-dlp's own errors, ffmpeg's lines and the relay's notes when yt-dlp ran
    ffmpeg; network failures say what happened, with which host, while doing what.

    `window` is the padded range the attempt asked for; a report whose ``segment`` is false
    fetched (or failed to fetch) the whole source.
    """
    stage, host = report.get("stage", "worker"), report.get("host")
    doing = activity(stage, window if report.get("segment") else None)
    if report.get("tool") == "ffmpeg":
        return _ffmpeg_failure(report, host, doing, socket_timeout)
    failure = classify(report["message"], report.get("http_status"), stage)
    if failure.status != NETWORK or stage == "worker":
        return failure
    sub, _, detail = failure.reason.partition(": ")
    if sub.startswith("server error"):
        return dataclasses.replace(failure, reason=f"{sub}: {host or 'the server'} answered {sub[14:-1]} while "
                                                   f"{doing}: {detail}")
    return dataclasses.replace(failure, reason=network_reason(sub, host, doing, detail, socket_timeout))


def _ffmpeg_failure(report, host, doing, socket_timeout):
    lines, code = report.get("lines") or [], report.get("exit_code")
    last = lines[-1] if lines else "no message"
    fault = report.get("transfer")
    if fault and fault["event"] == "connect":  # before the HTTP lines: ffmpeg then quotes the relay's 502
        return Failure(NETWORK, _relay_reason(fault, doing, socket_timeout), transient=True)
    for line in lines:  # an HTTP error answer: as yt-dlp's own would be classified
        m = _FFMPEG_HTTP.search(line)
        if m:
            said = m.group(1) or m.group(2) or f"{m.group(3)}XX"  # ffmpeg names some only by class
            failure = classify(line, int(said.replace("XX", "00")), "download")
            kind = failure.reason.split(": ", 1)[0].replace(f"HTTP {said.replace('XX', '00')}", f"HTTP {said}")
            return dataclasses.replace(failure, reason=f"{kind}: {host or 'the server'} answered HTTP {said} "
                                                       f"while {doing}: ffmpeg: {line}")
    if fault:
        return Failure(NETWORK, _relay_reason(fault, doing, socket_timeout), transient=True)
    for sub, rx in _FFMPEG_NETWORK:
        for line in lines:
            if rx.search(line):
                return Failure(NETWORK, network_reason(sub, host, doing, f"ffmpeg: {line}",
                                                       socket_timeout if sub == "timed out" else None),
                               transient=True)
    cut_short = next((line for line in lines if _FFMPEG_CUT_SHORT.search(line)), None)
    if cut_short and not report.get("relay"):  # no relay watched the transfer: most likely it broke off
        return Failure(NETWORK, f"truncated: the transfer from {host or 'the server'} broke off while {doing} "
                                f"(ffmpeg: {cut_short})", transient=True)
    bad = cut_short or next((line for rx in _FFMPEG_BAD_MEDIA for line in lines if rx.search(line)), None)
    if bad:  # the relay saw the transfer end normally: the media itself is bad
        return Failure(CORRUPT, f"ffmpeg cannot read the media from {host or 'the server'} while {doing}: {bad}")
    ended = f"killed by signal {-code}" if isinstance(code, int) and code < 0 else f"exit code {code}"
    return Failure(FAILED, f"ffmpeg failed ({ended}) while {doing}: {last}")


def _relay_reason(fault, doing, socket_timeout):
    host = fault["host"]
    if "length" in fault:
        size = f"{_size(fault['body'])} of {_size(fault['length'])}"
    else:
        size = _size(fault["body"] if "body" in fault else fault.get("bytes", 0))
    if fault["event"] == "stall":  # ffmpeg gave up after its read timeout, the socket timeout
        idle = f"{socket_timeout:g}" if fault["idle"] >= 0.95 * socket_timeout else f"{fault['idle']:.1f}"
        return f"timed out: no data for {idle} s from {host} while {doing} (after {size})"
    if fault["event"] == "reset":
        return f"connection reset: {host} reset the connection while {doing} (after {size}; {fault['error']})"
    error = fault.get("error", "")
    sub = ("connection refused" if "refused" in error.lower() else "DNS" if "resolve" in error.lower()
           else "timed out" if "timed out" in error.lower() else
           "unreachable" if "unreachable" in error.lower() else "connection failed")
    return f"{sub}: cannot connect to {host} while {doing}: {error}"


def _size(n):
    return f"{n} bytes" if n < 1024 else f"{n / 1024:.0f} KiB" if n < 1024 * 1024 else f"{n / 2 ** 20:.1f} MiB"


def _refused_extraction(code, detail):
    sub = {403: "forbidden", 404: "not found", 410: "gone"}[code]
    if _PRIMARY_PAGE.search(detail) and not _YOUTUBE.match(detail):
        return Failure(UNAVAILABLE, f"{sub} (HTTP {code}): {detail}", permanent=True)
    if code == 403:
        return Failure(RATE_LIMITED, f"blocked (HTTP 403, not a removed video): {detail}")
    return Failure(FAILED, f"{sub} (HTTP {code}, not a removed video): {detail}")


def retry_after_seconds(value, now=None):
    """A Retry-After header (delta seconds or an HTTP date) in seconds from now; None if absent or unparsable."""
    if value is None:
        return None
    value = str(value).strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt, base, cap, retry_after=None, rng=random, equal_jitter=False):
    """Seconds to wait before retry number `attempt` (1-based): full jitter on an exponential
    bound (equal jitter: half the bound fixed, half random), at least Retry-After; None when
    Retry-After exceeds `cap` (do not retry now)."""
    if retry_after is not None and retry_after > cap:
        return None
    bound = min(cap, base * 2 ** (attempt - 1))
    floor = bound / 2 if equal_jitter else 0.0
    return max(floor + rng.uniform(0, bound - floor), retry_after or 0.0)


# --- per-process rate governor and bot-check breaker ----------------------------------------

class RateGovernor:
    """Paces request starts in one process: at most `ceiling` per second (0 = unlimited), halved on
    every 429 (from the ceiling, or a guess when unlimited) and recovered additively on success."""

    def __init__(self, ceiling=0.0, clock=time.monotonic):
        self._lock = threading.Lock()
        self._clock = clock
        self._next = 0.0
        self.ceiling = ceiling
        self.rate = ceiling or None  # None: unlimited

    def configure(self, ceiling):
        with self._lock:
            throttled = self.rate is not None and self.rate < (self.ceiling or _FREE_RATE_GUESS)
            self.ceiling = ceiling
            if not throttled:
                self.rate = ceiling or None

    def reserve(self, not_after=None):
        """Claim the next start slot: seconds to wait for it, or None (nothing claimed) if it lies after `not_after`."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            if not_after is not None and slot > not_after:
                return None
            if self.rate is not None:
                self._next = slot + 1 / self.rate
            return slot - now

    def hold(self, seconds):
        """No start slot before `seconds` (at most _MAX_HOLD) from now; returns the seconds held."""
        seconds = min(max(0.0, seconds), _MAX_HOLD)
        with self._lock:
            self._next = max(self._next, self._clock() + seconds)
        return seconds

    def throttle(self):
        with self._lock:
            self.rate = max(_MIN_RATE, (self.rate or _FREE_RATE_GUESS) / 2)

    def recover(self):
        with self._lock:
            if self.rate is None:
                return
            top = self.ceiling or _FREE_RATE_GUESS
            self.rate += top / _RECOVERY_STEPS
            if self.rate >= top:
                self.rate = self.ceiling or None


class BotCheckBreaker:
    """Counts consecutive clips answered with a bot check (a success or an unavailable answer resets
    the count); at `limit`, every later fetch is refused without a request."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0
        self.limit = 5

    def check(self):
        with self._lock:
            if self.count >= self.limit:
                raise BotCheckStop(RATE_LIMITED, f"{BOT_CHECK_REASON_PREFIX} after {self.count} consecutive "
                                 "'confirm you're not a bot' answers; pass --cookies FILE (see README)")

    def record(self, bot_check):
        with self._lock:
            self.count = self.count + 1 if bot_check else 0


class WorkerState:
    """Process-wide state shared by every Fetcher of a worker process."""

    def __init__(self):
        self.governor = RateGovernor()
        self.breaker = BotCheckBreaker()
        self._lock = threading.Lock()
        self._cache = None  # (pid, path)

    def configure(self, options):
        self.governor.configure(options.fetch_rate)
        self.breaker.limit = options.bot_check_limit

    def cache_dir(self):
        """yt-dlp's cache dir for this process's fetches: made on first use, removed at exit."""
        with self._lock:
            if self._cache is None or self._cache[0] != os.getpid():
                path = tempfile.mkdtemp(prefix="kinetics-prep-ytdlp-")
                atexit.register(_remove_own_dir, os.getpid(), path)
                self._cache = (os.getpid(), path)
            return self._cache[1]


def _remove_own_dir(pid, path):
    if os.getpid() == pid:  # not in a forked child
        shutil.rmtree(path, ignore_errors=True)


_WORKER = WorkerState()


# --- tools and preflight -----------------------------------------------------------------------

def ffmpeg_path(options):
    if options.ffmpeg:
        return options.ffmpeg
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


def js_runtime_path(options):
    if options.js_runtime:
        return options.js_runtime
    try:
        import deno
        return deno.find_deno_bin()
    except (ImportError, FileNotFoundError):
        return None


def preflight(options):
    """Check yt-dlp, ffmpeg, the JS runtime and the cookies; returns their versions, or raises
    RuntimeError with one line saying what is missing and how to get it."""
    for module in ("yt_dlp", "yt_dlp_ejs"):  # yt-dlp-ejs: the YouTube challenge scripts of yt-dlp[default]
        if importlib.util.find_spec(module) is None:
            raise RuntimeError(f"fetch preflight: {module.replace('_', '-')} is not installed ({INSTALL_HINT})")
    import yt_dlp.version
    versions = {"yt-dlp": yt_dlp.version.__version__}
    for name, path, hint in (("ffmpeg", ffmpeg_path(options), "pip install imageio-ffmpeg"),
                             ("deno", js_runtime_path(options), "the JavaScript runtime yt-dlp needs for YouTube:"
                                                                " pip install 'yt-dlp[default,deno]'")):
        versions[name] = _tool_version(name, path, hint)
    if options.cookies:
        _read_cookies(options.cookies)
    return versions


def _tool_version(name, path, hint):
    if not path:
        raise RuntimeError(f"fetch preflight: {name} not found ({hint})")
    try:
        out = subprocess.run([path, "-version" if name == "ffmpeg" else "--version"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"fetch preflight: {name} at {path} does not run ({type(e).__name__}; {hint})") from None
    return out.split("\n", 1)[0].strip()


def _read_cookies(url):
    import fsspec
    try:
        with fsspec.open(url, "rb") as f:
            return f.read()
    except Exception as e:
        raise RuntimeError(f"cannot read --cookies {url}: {type(e).__name__}: {e}".splitlines()[0]) from None


# --- the fetcher -------------------------------------------------------------------------------

class Fetcher:
    """Fetches sources for one worker; cheap to build (e.g. in DoFn.setup), safe to share between threads.

        fetcher = Fetcher(options)
        for w in windows(ranges_of_this_id, options.pad):
            result = fetcher.fetch(youtube_id, w.start, w.end, workdir)  # or FetchError
            # source time t of each range in w.ranges is at t - result.offset in result.path

    `worker` defaults to the process-wide state (rate governor, bot-check breaker); tests pass their own.
    """

    def __init__(self, options, worker=None):
        self.options = options
        self.worker = worker or _WORKER
        self.worker.configure(options)
        self._ffmpeg = ffmpeg_path(options)
        self._js_runtime = js_runtime_path(options)
        self._cookies = None

    def fetch(self, youtube_id, start, end, workdir):
        """Fetch [start - pad, end + pad] (clamped at 0) of the source into `workdir`; raises FetchError.

        ``clip_timeout`` bounds the time from the first request on (attempts, backoff and pacing
        between them); the wait for the worker's first request slot is not counted.
        """
        url = source_url(self.options.url_template, youtube_id)
        self.worker.breaker.check()
        cookies = self._cookie_bytes()
        os.makedirs(workdir, exist_ok=True)
        window = (max(0.0, start - self.options.pad), end + self.options.pad)
        began, deadline, attempts, failure = time.monotonic(), None, 0, None
        while True:
            wait = self.worker.governor.reserve(not_after=deadline)
            if wait is None:  # only after a failure: the first attempt sets the deadline
                raise FetchError(failure.status, f"{failure.reason} (no request slot before the clip timeout)",
                                 failure.permanent, attempts)
            time.sleep(wait)
            deadline = deadline or time.monotonic() + self.options.clip_timeout
            attempts += 1
            outcome, retry_after = self._attempt(youtube_id, url, window, workdir, deadline, cookies)
            if isinstance(outcome, FetchResult):
                self._note(None)
                return dataclasses.replace(outcome, attempts=attempts, seconds=time.monotonic() - began)
            failure = outcome
            self._note(failure)
            pause = self._honour_retry_after(failure, retry_after)
            delay = self._retry_delay(failure, attempts, retry_after, deadline)
            if delay is None:
                raise FetchError(failure.status, failure.reason + pause, failure.permanent, attempts)
            log.info("fetch %s: %s; retry %d in %.1f s", youtube_id, failure.reason, attempts, delay)
            time.sleep(delay)

    def _note(self, failure):
        """Feed an attempt's outcome (None: success) to the worker's breaker and governor."""
        if failure is None:
            self.worker.breaker.record(False)
            self.worker.governor.recover()
            return
        if failure.bot_check or failure.status == UNAVAILABLE:
            self.worker.breaker.record(failure.bot_check)
        if failure.status == RATE_LIMITED:
            self.worker.governor.throttle()

    def _honour_retry_after(self, failure, retry_after):
        """Hold the whole worker for a 429's Retry-After; the note for the clip's reason ("" if none)."""
        if failure.status != RATE_LIMITED or retry_after is None:
            return ""
        held = self.worker.governor.hold(retry_after)
        return f" (Retry-After {retry_after:.0f} s: this worker pauses {held:.0f} s)"

    def _retry_delay(self, failure, attempts, retry_after, deadline):
        if not failure.transient or attempts > self.options.retries:
            return None
        delay = backoff_delay(attempts, self.options.backoff_base, self.options.backoff_cap, retry_after,
                              equal_jitter=failure.status == RATE_LIMITED)
        if delay is None or time.monotonic() + delay >= deadline:
            return None
        return delay

    def _attempt(self, youtube_id, url, window, workdir, deadline, cookies):
        """One child-process fetch: (FetchResult, None) or (Failure, retry_after seconds or None)."""
        job_dir = tempfile.mkdtemp(prefix=".fetch-", dir=workdir)
        try:
            cookiefile = _write_private(os.path.join(job_dir, "cookies.txt"), cookies) if cookies is not None else None
            job = {"url": url, "window": list(window) if self.options.segment else None,
                   "log": os.path.join(job_dir, "fetch.log"), "params": self._params(job_dir, cookiefile),
                   "socket_timeout": self.options.socket_timeout, "parent_pid": os.getpid()}
            report = _run_worker(job, job_dir, deadline - time.monotonic())
            if report is None:
                return Failure(NETWORK, f"timed out after {self.options.clip_timeout:g} s"), None
            if not report.get("ok"):
                failure = classify_report(report, window, self.options.socket_timeout)
                return failure, retry_after_seconds(report.get("retry_after"))
            return self._result(youtube_id, window, workdir, report), None
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)

    def _result(self, youtube_id, window, workdir, report):
        size = os.path.getsize(report["path"]) if os.path.isfile(report["path"]) else 0
        if size == 0:
            doing = activity("download", window if report["segment"] else None)
            return Failure(NETWORK, f"truncated: yt-dlp wrote no data while {doing}", transient=True)
        ext = os.path.splitext(report["path"])[1]
        tag = f"{round(window[0] * 1000)}-{round(window[1] * 1000)}ms" if report["segment"] else "full"
        path = os.path.join(workdir, f"{youtube_id}.{tag}{ext}")
        os.replace(report["path"], path)
        return FetchResult(path=path, offset=window[0] if report["segment"] else 0.0,
                           fetch_range=tuple(window) if report["segment"] else None, bytes_fetched=size,
                           format_id=str(report["format_id"]), ytdlp_version=report["version"], attempts=0,
                           segment=report["segment"], seconds=0.0)

    def _params(self, job_dir, cookiefile):
        """The YoutubeDL parameters: ours, then --ytdlp-opt pairs over them."""
        o = self.options
        params = {
            "format": format_selector(o.max_height),
            "outtmpl": {"default": os.path.join(job_dir, "media.%(ext)s")},
            "paths": {"home": job_dir, "temp": job_dir},
            "noplaylist": True, "noprogress": True, "cachedir": o.cache_dir or self.worker.cache_dir(),
            "overwrites": True, "updatetime": False,
            "retries": 0, "fragment_retries": 0, "extractor_retries": 0,
            "socket_timeout": o.socket_timeout,
            "external_downloader_args": {"ffmpeg_i": [
                "-loglevel", "warning", "-nostats", "-xerror", "-rw_timeout", str(int(o.socket_timeout * 1e6))]},
        }
        if self._ffmpeg:
            params["ffmpeg_location"] = self._ffmpeg
        if self._js_runtime:
            params["js_runtimes"] = {"deno": {"path": self._js_runtime}}
        if cookiefile:
            params["cookiefile"] = cookiefile
        if o.proxy:
            params["proxy"] = o.proxy
        params.update(dict(o.ytdlp_opts))
        return params

    def _cookie_bytes(self):
        """The --cookies file's content, read once per Fetcher (None without --cookies)."""
        if self.options.cookies and self._cookies is None:
            try:
                self._cookies = _read_cookies(self.options.cookies)
            except RuntimeError as e:
                raise FetchError(FAILED, str(e)) from None
        return self._cookies


def _write_private(path, data):
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(data)
    return path


def _run_worker(job, job_dir, timeout):
    """Run transforms.fetch_worker on `job`; its JSON report, or None if it ran past `timeout`."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
               TMPDIR=job_dir, DENO_DIR=os.path.join(job_dir, "deno"), XDG_CACHE_HOME=os.path.join(job_dir, "cache"))
    with open(job["log"], "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "transforms.fetch_worker"], cwd=job_dir, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        try:
            out, _ = proc.communicate(json.dumps(job).encode(), timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return None
        except BaseException:  # KeyboardInterrupt, a signal turned into an exception: leave no orphans
            _kill_group(proc)
            raise
    try:
        return json.loads(out.decode(errors="replace").strip().splitlines()[-1])
    except (IndexError, ValueError):
        if proc.returncode < 0:
            ended = f"fetch worker killed by {signal.Signals(-proc.returncode).name}"
        else:
            ended = f"fetch worker exited with code {proc.returncode}"
        return {"ok": False, "stage": "worker", "message": f"{ended}: {_log_tail(job['log']) or 'no message'}"}


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()
    for _ in range(50):  # until the group's other members (ffmpeg, deno) are gone too
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


def _log_tail(path):
    """The last meaningful line of a worker's log (a traceback's last line is its exception)."""
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    except OSError:
        return ""
    lines = [line for line in lines if not line.startswith("--paths is ignored")]
    return lines[-1] if lines else ""
