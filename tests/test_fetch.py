"""transforms.fetch: real yt-dlp (generic extractor, direct mp4 links) against a fault-injecting
HTTP server on 127.0.0.1; plus the pure parts (taxonomy, backoff, governor, breaker, windows)."""
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time

import av
import imageio_ffmpeg
import pytest
import yt_dlp
import yt_dlp.version

import faultserver as fs
from transforms import fetch

SOURCE_SECONDS, FPS = 60, 10
ID = "okvideo0001"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fetch.__file__)))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return fs.make_video(tmp_path_factory.mktemp("media") / "source.mp4", SOURCE_SECONDS, fps=FPS)


@pytest.fixture
def server(source):
    with fs.FaultServer() as s:
        yield s


@pytest.fixture
def fetcher(server, source):
    """fetcher(id, plan..., then=..., **options) -> a Fetcher with its own worker state, `id` served."""
    def make(youtube_id=ID, *plan, then=None, **options):
        server.add(youtube_id, source)
        server.plan(youtube_id, *plan, then=then)
        settings = dict(url_template=server.url_template(), socket_timeout=5, clip_timeout=60,
                        retries=2, backoff_base=0.05, backoff_cap=5)
        return fetch.Fetcher(fetch.FetchOptions(**{**settings, **options}), worker=fetch.WorkerState())
    return make


@pytest.fixture
def chosen_delays(monkeypatch):
    """The retry delays the fetcher chose (backoff_delay's answers; None: no retry now), in order:
    what a Retry-After or a backoff made it wait, without timing it on a machine that may be busy."""
    chosen, real = [], fetch.backoff_delay

    def spy(*args, **kwargs):
        chosen.append(real(*args, **kwargs))
        return chosen[-1]

    monkeypatch.setattr(fetch, "backoff_delay", spy)
    return chosen


def fails(fetcher_, workdir, youtube_id=ID, start=20, end=30):
    with pytest.raises(fetch.FetchError) as info:
        fetcher_.fetch(youtube_id, start, end, str(workdir))
    assert os.listdir(workdir) == [], "nothing may stay behind in the work dir after a failure"
    return info.value


def decoded_frames(path):
    with av.open(path) as c:
        return [fs.frame_index(f) for f in c.decode(video=0)]


# --- real fetches ------------------------------------------------------------------------------

def test_segment_fetch_reads_only_the_padded_window(fetcher, server, source, tmp_path):
    # a 500 kB/s link: unpaced, loopback socket buffers would take in the whole (small) source before
    # each abort and inflate the server's count
    result = fetcher(ID, then=fs.trickle(500_000)).fetch(ID, 31.5, 41.5, str(tmp_path))

    assert result.segment and result.offset == 29.5 and result.fetch_range == (29.5, 43.5) and result.attempts == 1
    assert result.format_id == "mp4" and result.ytdlp_version == yt_dlp.version.__version__
    assert os.listdir(tmp_path) == [os.path.basename(result.path)]
    frames = decoded_frames(result.path)
    assert frames[0] == round(29.5 * FPS) and frames[-1] == round(43.5 * FPS) - 1
    assert frames == list(range(frames[0], frames[-1] + 1))
    assert result.bytes_fetched == os.path.getsize(result.path) < 0.4 * os.path.getsize(source)
    stats = server.stats(ID)
    assert stats.log[0] == ("GET", None, 200)  # yt-dlp's generic extractor sniffs the content type
    # ffmpeg reads the index at the front, then jumps by HTTP Range to the keyframe before 29.5 s; the
    # server's byte count includes what was sent while ffmpeg had not yet closed a connection it left
    # (see bench/bench_fetch.py): ~0.5 of the source on a quiet machine, more the longer a busy one
    # keeps ffmpeg from closing; reading the source through would send all of it and more
    seeks = [int(rng.split("=")[1].rstrip("-")) for _, rng, _ in stats.log[1:] if rng and rng != "bytes=0-"]
    assert seeks and seeks[-1] > 0.4 * os.path.getsize(source)
    assert result.bytes_fetched <= stats.bytes_sent < 0.8 * os.path.getsize(source)


def test_whole_source_when_segments_are_off(fetcher, source, tmp_path):
    result = fetcher(segment=False).fetch(ID, 20, 30, str(tmp_path))
    assert not result.segment and result.offset == 0.0 and result.bytes_fetched == os.path.getsize(source)
    assert result.fetch_range is None


def test_window_is_clamped_at_zero(fetcher, tmp_path):
    result = fetcher().fetch(ID, 1, 11, str(tmp_path))
    assert result.segment and result.offset == 0.0
    frames = decoded_frames(result.path)
    assert frames[0] == 0 and frames[-1] == 13 * FPS - 1


def test_full_download_when_the_format_cannot_be_fetched_partially(fetcher, server, source, tmp_path):
    # the generic extractor's fragment_query argument gives the format a per-segment query
    # string, which yt-dlp's ffmpeg downloader cannot honour: yt-dlp refuses the ranged download
    refuse_ranges = (("extractor_args", {"generic": {"fragment_query": ["token=1"]}}),)
    result = fetcher(ytdlp_opts=refuse_ranges).fetch(ID, 20, 30, str(tmp_path))

    assert not result.segment and result.fetch_range is None and result.offset == 0.0 and result.attempts == 1
    assert result.bytes_fetched == os.path.getsize(source)
    assert decoded_frames(result.path) == list(range(SOURCE_SECONDS * FPS))
    stats = server.stats(ID)
    assert [status for _, _, status in stats.log] == [200, 200]  # one extraction, one download
    assert stats.bytes_sent >= os.path.getsize(source)


@pytest.mark.parametrize("code, reason", [(404, "not found (HTTP 404)"), (403, "forbidden (HTTP 403)"),
                                          (410, "gone (HTTP 410)")])
def test_missing_video_is_unavailable_and_not_retried(fetcher, server, tmp_path, code, reason):
    error = fails(fetcher(ID, then=fs.status(code)), tmp_path)
    assert (error.status, error.permanent, error.attempts) == ("unavailable", True, 1)
    assert error.reason.startswith(reason)
    assert server.stats(ID).requests == 1


def test_refused_media_request_after_extraction_is_failed_not_unavailable(fetcher, server, tmp_path):
    error = fails(fetcher(ID, None, fs.status(403)), tmp_path)
    assert (error.status, error.permanent, error.attempts) == ("failed", False, 1)
    assert error.reason.startswith("media request refused (HTTP 403)")


def test_429_with_retry_after_waits_then_succeeds(fetcher, server, tmp_path, chosen_delays):
    f = fetcher(ID, fs.status(429, retry_after=2))
    result = f.fetch(ID, 20, 30, str(tmp_path))

    assert result.attempts == 2 and result.segment
    stats = server.stats(ID)
    assert stats.log[0] == ("GET", None, 429)
    # Retry-After honoured: the retry waits 2 s, not the 0.05 s backoff nor the 5 s cap, and the
    # server hears nothing for those 2 s
    assert chosen_delays == [2.0]
    assert stats.times[1] - stats.times[0] >= 2.0
    assert f.worker.governor.rate is not None, "a 429 throttles the worker"


def test_429_with_an_http_date_retry_after(fetcher, tmp_path):
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 2))
    began = time.monotonic()
    assert fetcher(ID, fs.status(429, retry_after=when)).fetch(ID, 20, 30, str(tmp_path)).attempts == 2
    assert time.monotonic() - began >= 1.0


def test_persistent_429_is_rate_limited_after_all_retries(fetcher, server, tmp_path):
    error = fails(fetcher(ID, then=fs.status(429), retries=2), tmp_path)
    assert (error.status, error.permanent, error.attempts) == ("rate_limited", False, 3)
    assert error.reason.startswith("HTTP 429")
    assert server.stats(ID).requests == 3


def test_429_on_the_media_request_waits_at_least_half_the_backoff(fetcher, server, tmp_path):
    # ffmpeg's ranged request (the second) answers 429, without Retry-After
    began = time.monotonic()
    result = fetcher(ID, None, fs.status(429), backoff_base=2).fetch(ID, 20, 30, str(tmp_path))
    elapsed = time.monotonic() - began

    assert result.attempts == 2 and result.segment
    assert [status for _, _, status in server.stats(ID).log][:3] == [200, 429, 200]
    assert elapsed >= 1.0, "equal jitter: a 429 waits at least backoff_base / 2"


def test_retry_after_beyond_the_cap_is_not_waited_for_but_pauses_the_worker(fetcher, server, tmp_path,
                                                                              chosen_delays):
    f = fetcher(ID, then=fs.status(429, retry_after=3600), backoff_cap=5)
    error = fails(f, tmp_path)
    assert (error.status, error.attempts) == ("rate_limited", 1)
    assert "Retry-After 3600 s: this worker pauses 900 s" in error.reason
    assert chosen_delays == [None] and server.stats(ID).requests == 1, "no wait, no retry"
    assert f.worker.governor.reserve(not_after=time.monotonic() + 850) is None, "held for 15 minutes"


def test_retry_after_pauses_the_next_clip_of_the_worker(fetcher, server, source, tmp_path):
    f = fetcher(ID, fs.status(429, retry_after=2), retries=0)
    error = fails(f, tmp_path)
    assert error.status == "rate_limited" and "Retry-After 2 s" in error.reason
    server.add("othervideo1", source)
    began = time.monotonic()
    assert f.fetch("othervideo1", 20, 30, str(tmp_path)).attempts == 1
    assert time.monotonic() - began >= 1.9, "no request before the Retry-After has passed"


def test_server_error_on_the_ranged_request_then_success(fetcher, server, tmp_path):
    result = fetcher(ID, None, fs.status(500)).fetch(ID, 20, 30, str(tmp_path))
    assert result.attempts == 2 and result.segment
    assert [status for _, _, status in server.stats(ID).log][:3] == [200, 500, 200]


def test_stalled_transfer_is_killed_at_the_clip_timeout(fetcher, server, tmp_path):
    # 15 s: time for a busy machine to get to ffmpeg's ranged request before the kill
    f = fetcher(ID, then=fs.STALL, socket_timeout=300, clip_timeout=15)
    began = time.monotonic()
    error = fails(f, tmp_path)
    elapsed = time.monotonic() - began

    assert (error.status, error.reason, error.attempts) == ("network", "timed out after 15 s", 1)
    # the clip timeout ended it: not before 15 s, and long before the 300 s socket timeout could have
    assert 15.0 <= elapsed < 100
    assert len(server.stats(ID).log) == 2, "killed while ffmpeg waited for the ranged body"
    assert not _processes_mentioning(server.base_url), "the child process group is gone"


def test_socket_timeout_reaches_ffmpeg(fetcher, server, tmp_path):
    # a clip timeout no busy machine reaches: only ffmpeg's 1 s read timeout can end the first
    # attempt in time for a second one
    error = fails(fetcher(ID, then=fs.STALL, socket_timeout=1, retries=1, clip_timeout=120), tmp_path)
    assert (error.status, error.permanent, error.attempts) == ("network", False, 2)
    assert error.reason.startswith("timed out: no data for 1 s from 127.0.0.1:")


def test_truncated_body_is_a_network_failure(fetcher, server, tmp_path):
    error = fails(fetcher(ID, then=fs.truncate(0.3), retries=1), tmp_path)
    assert (error.status, error.permanent, error.attempts) == ("network", False, 2)
    assert error.reason.startswith("truncated: ") and "ends prematurely" in error.reason


def test_truncated_full_download_is_a_network_failure(fetcher, tmp_path):
    refuse_ranges = (("extractor_args", {"generic": {"fragment_query": ["token=1"]}}),)
    error = fails(fetcher(ID, None, fs.truncate(0.5), then=fs.truncate(0.5), retries=0,
                          ytdlp_opts=refuse_ranges), tmp_path)
    assert (error.status, error.attempts) == ("network", 1)
    assert error.reason.startswith("truncated: ")


def test_slow_trickle_within_the_timeout_succeeds(fetcher, server, source, tmp_path):
    # a steady 100 kB/s stream is never idle for the 1 s socket timeout, so it finishes
    began = time.monotonic()
    result = fetcher(ID, then=fs.trickle(100_000), socket_timeout=1, clip_timeout=60).fetch(ID, 1, 11, str(tmp_path))
    assert result.segment and result.attempts == 1
    assert time.monotonic() - began > result.bytes_fetched / 100_000


def test_bot_checks_trip_the_breaker(fetcher, server, source, tmp_path):
    ids = [f"botcheck{i:03d}" for i in range(4)]
    f = fetcher(ids[0], then=fs.status(403, reason="Sign in to confirm you're not a bot"), bot_check_limit=2)
    for youtube_id in ids[1:]:
        server.add(youtube_id, source)
        server.plan(youtube_id, then=fs.status(403, reason="Sign in to confirm you're not a bot"))

    first, second, third = (fails(f, tmp_path, youtube_id) for youtube_id in ids[:3])
    for error in (first, second):
        assert (error.status, error.attempts, error.permanent) == ("rate_limited", 1, False)
        assert error.reason.startswith("bot check: ") and error.reason.endswith("(pass --cookies FILE)")
    assert third.status == "rate_limited" and third.attempts == 0
    assert third.reason.startswith(fetch.BOT_CHECK_REASON_PREFIX) and "--cookies" in third.reason
    assert server.stats(ids[2]).requests == 0, "a tripped breaker fetches nothing"


def test_cookies_from_an_fsspec_url_are_sent(fetcher, server, tmp_path):
    import fsspec
    with fsspec.open("memory://cookies/jar.txt", "w") as f:
        f.write("# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tSESSION\tsecret42\n")
    result = fetcher(cookies="memory://cookies/jar.txt").fetch(ID, 20, 30, str(tmp_path))
    assert "SESSION=secret42" in server.stats(ID).cookies[0]
    assert os.listdir(tmp_path) == [os.path.basename(result.path)], "the cookie copy is cleaned up"


def test_unreadable_cookies_fail_before_any_request(fetcher, server, tmp_path):
    error = fails(fetcher(cookies="/nonexistent/cookies.txt"), tmp_path)
    assert error.status == "failed" and "cannot read --cookies" in error.reason and error.attempts == 0
    assert server.total_requests == 0


def test_invalid_id_raises_before_any_request(fetcher, server, tmp_path):
    f = fetcher()
    for bad in ("short", "../../etc/pa", "abc?def=ghi", "okvideo0001x"):
        error = fails(f, tmp_path, bad)
        assert error.status == "failed" and "invalid YouTube id" in error.reason and error.attempts == 0
    assert server.total_requests == 0


@pytest.fixture
def python_sigint():
    """SIGINT raising KeyboardInterrupt, as in a terminal: a process started in the background by a
    shell without job control (a CI script's `cmd &`, a `( ... &)` subshell) inherits SIGINT ignored,
    and Python then leaves it ignored, which would make the interrupt below do nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_interrupted_fetch_kills_its_worker_group(fetcher, server, tmp_path, python_sigint):
    # the bounds are far off: on two saturated cores a worker can take minutes to start ffmpeg, and
    # the fetch must still be waiting on it when the interrupt comes
    f = fetcher(ID, then=fs.STALL, socket_timeout=900, clip_timeout=900)
    seen = {}

    def interrupt_once_ffmpeg_waits():
        try:
            seen["group"] = _wait_for_ffmpeg_in_worker_group(os.getpid(), timeout=600)
        except BaseException as e:  # the interrupt comes all the same, and the test says why
            seen["error"] = repr(e)
        finally:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=interrupt_once_ffmpeg_waits, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        f.fetch(ID, 20, 30, str(tmp_path))
    assert seen.get("group"), f"the worker ran ffmpeg in its own process group ({seen})"
    try:
        assert not _live_members(seen["group"]), "the worker and its ffmpeg are gone"
    finally:
        _kill_group(seen["group"])
    assert os.listdir(tmp_path) == []


def test_worker_dies_with_the_process_that_started_it(server, source, tmp_path):
    server.add(ID, source)
    server.plan(ID, then=fs.STALL)
    script = ("import sys\nfrom transforms import fetch\n"
              "options = fetch.FetchOptions(url_template=sys.argv[1], socket_timeout=300, clip_timeout=300,"
              " cache_dir=sys.argv[3] + '/cache')\n"  # a SIGKILL skips the removal of a default one
              "fetch.Fetcher(options).fetch(sys.argv[2], 20, 30, sys.argv[3])\n")
    parent = subprocess.Popen([sys.executable, "-c", script, server.url_template(), ID, str(tmp_path)], cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        group = _wait_for_ffmpeg_in_worker_group(parent.pid)
    finally:
        parent.kill()
        parent.wait()
    assert group, "the worker ran ffmpeg in its own process group"
    for _ in range(300):  # it polls every 0.5 s; up to 30 s on a busy machine
        if not _live_members(group):
            break
        time.sleep(0.1)
    try:
        assert not _live_members(group), "the orphaned worker killed its group"
    finally:
        _kill_group(group)


def _wait_for_ffmpeg_in_worker_group(parent_pid, timeout=180):
    """The process group of `parent_pid`'s fetch worker once ffmpeg runs in it; None if not within
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, (ppid, _, _) in _processes().items():
            if ppid == parent_pid and "transforms.fetch_worker" in _cmdline(pid):
                if any("ffmpeg" in _cmdline(member) for member in _live_members(pid)):
                    return pid
        time.sleep(0.05)
    return None


def _kill_group(pgid):
    """Leave no strays behind when a test fails."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _live_members(pgid):
    return [pid for pid, (_, group, state) in _processes().items() if group == pgid and state != "Z"]


def _processes():
    """{pid: (parent pid, process group, state)} from /proc."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state, ppid, pgrp = f.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        out[int(pid)] = (int(ppid), int(pgrp), state)
    return out


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_one_ytdlp_cache_dir_per_worker_process(fetcher, tmp_path, monkeypatch):
    cache_dirs = []
    run_worker = fetch._run_worker

    def spy(job, job_dir, timeout):
        cache_dirs.append(job["params"]["cachedir"])
        return run_worker(job, job_dir, timeout)

    monkeypatch.setattr(fetch, "_run_worker", spy)
    f = fetcher()
    f.fetch(ID, 20, 30, str(tmp_path / "a"))
    f.fetch(ID, 40, 50, str(tmp_path / "b"))
    fetcher(cache_dir=str(tmp_path / "mine")).fetch(ID, 20, 30, str(tmp_path / "c"))
    assert cache_dirs[0] == cache_dirs[1] != cache_dirs[2] == str(tmp_path / "mine")
    assert os.path.isdir(cache_dirs[0]) and not cache_dirs[0].startswith(str(tmp_path))
    assert os.path.basename(cache_dirs[0]).startswith("kinetics-prep-ytdlp-")


def test_the_ytdlp_cache_dir_is_removed_at_exit():
    out = subprocess.run([sys.executable, "-c", "from transforms import fetch; print(fetch.WorkerState().cache_dir())"],
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, check=True)
    path = out.stdout.strip()
    assert os.path.basename(path).startswith("kinetics-prep-ytdlp-") and not os.path.exists(path)


def _processes_mentioning(text):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


# --- preflight and options -----------------------------------------------------------------------

def test_preflight_reports_versions():
    versions = fetch.preflight(fetch.FetchOptions())
    assert versions["yt-dlp"] == yt_dlp.version.__version__
    assert versions["ffmpeg"].startswith("ffmpeg version") and versions["deno"].startswith("deno ")


@pytest.mark.parametrize("options, names", [
    (dict(ffmpeg="/nonexistent/ffmpeg"), ("ffmpeg", "/nonexistent/ffmpeg")),
    (dict(js_runtime="/nonexistent/deno"), ("deno", "JavaScript runtime", "yt-dlp[default,deno]")),
    (dict(cookies="/nonexistent/cookies.txt"), ("--cookies", "/nonexistent/cookies.txt")),
])
def test_preflight_fails_with_one_clear_line(options, names):
    with pytest.raises(RuntimeError) as info:
        fetch.preflight(fetch.FetchOptions(**options))
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in names)


@pytest.mark.parametrize("bad", [dict(url_template="https://example.com/watch"),
                                 dict(url_template="https://x/{id}/{youtube_id}"),
                                 dict(url_template="https://x/{{youtube_id}}.mp4"), dict(retries=-1),
                                 dict(clip_timeout=0), dict(fetch_rate=-1), dict(max_height=0),
                                 dict(ytdlp_opts=(("logger", object()),))])
def test_options_are_validated(bad):
    with pytest.raises(ValueError):
        fetch.FetchOptions(**bad)


def test_options_and_errors_pickle():
    options = fetch.FetchOptions(ytdlp_opts=fetch.parse_ytdlp_opts(["sleep_interval=2"]))
    assert pickle.loads(pickle.dumps(options)) == options
    error = pickle.loads(pickle.dumps(fetch.FetchError("network", "timed out after 3 s", False, 2)))
    assert (error.status, error.reason, error.permanent, error.attempts) == ("network", "timed out after 3 s", False, 2)


def test_parse_ytdlp_opts():
    assert fetch.parse_ytdlp_opts(['extractor_args={"youtube": {"player_client": ["web"]}}',
                                   "sleep_interval=1.5", "format=bv*+ba", "geo_bypass=true", "x = y=z"]) == (
        ("extractor_args", {"youtube": {"player_client": ["web"]}}), ("sleep_interval", 1.5),
        ("format", "bv*+ba"), ("geo_bypass", True), ("x", " y=z"))
    with pytest.raises(ValueError):
        fetch.parse_ytdlp_opts(["novalue"])


# --- pure parts ----------------------------------------------------------------------------------

def test_windows_merge_close_ranges():
    ws = fetch.windows([(100, 110), (0, 10), (12, 22), (45, 55), (5, 15), (0, 10)], pad=2, max_merge_gap=10)
    assert [(w.start, w.end, w.ranges) for w in ws] == [
        (0, 22, ((0, 10), (5, 15), (12, 22))),
        (45, 55, ((45, 55),)),
        (100, 110, ((100, 110),)),
    ]
    assert [(w.start, w.end) for w in fetch.windows([(0, 10), (40, 50)], pad=2)] == [(0, 50)]  # 26 s gap <= 30
    assert fetch.windows([], pad=2) == []


@pytest.mark.parametrize("message, status, sub", [
    ("This video is no longer available because the uploader has closed their YouTube account.",
     "unavailable", "account closed"),
    ("This video is no longer available because the YouTube account associated with this video has been terminated.",
     "unavailable", "account closed"),
    ("[youtube] x: Video unavailable. This video has been removed by the uploader", "unavailable",
     "removed by the uploader"),
    ("This video has been removed by the user.", "unavailable", "removed by the uploader"),
    ("This video is not available.", "unavailable", "unavailable"),
    ("This video does not exist.", "unavailable", "unavailable"),
    ("This video contains content from X, who has blocked it on copyright grounds.", "unavailable", "copyright"),
    ("This video is no longer available due to a copyright claim by X", "unavailable", "copyright"),
    ("removed because of multiple third-party notifications of copyright infringement.", "unavailable", "copyright"),
    ("This video has been removed as a duplicate of a previously uploaded video", "unavailable", "copyright"),
    ("The uploader has not made this video available in your country.", "unavailable", "country block"),
    ("This video contains content from X, who has blocked it in your country on copyright grounds.",
     "unavailable", "country block"),
    ("This video has been removed for violating YouTube's policy on spam, deceptive practices, and scams.",
     "unavailable", "spam"),
    ("This video has been removed for violating YouTube's policy on nudity or sexual content.",
     "unavailable", "nudity"),
    ("This video has been removed for violating YouTube's policy on harassment and bullying.",
     "unavailable", "harassment and bullying"),
    ("This video has been removed for violating YouTube's policy on harmful or dangerous content.",
     "unavailable", "harmful content"),
    ("This video has been removed for violating YouTube's Community Guidelines.", "unavailable",
     "community guidelines"),
    ("This video has been removed for violating YouTube's Terms of Service.", "unavailable", "terms of service"),
    ("Private video. Sign in if you've been granted access to this video", "unavailable", "private"),
    ("This video is private.", "unavailable", "private"),
    ("Please sign in to view this video.", "unavailable", "sign-in required"),
    ("[youtube] x: Login details are needed to download this content. Use --cookies-from-browser or --cookies",
     "unavailable", "sign-in required"),
    ("[youtube] x: This video is only available for registered users. Use --cookies", "unavailable",
     "sign-in required"),
    ("Sign in to confirm your age. This video may be inappropriate for some users.", "unavailable",
     "age restricted (sign-in)"),
    ("Join this channel to get access to members-only content like this video", "unavailable", "members only"),
    ("Sign in to confirm you\u2019re not a bot. Use --cookies-from-browser or --cookies", "rate_limited",
     "bot check"),
    ("Sign in to confirm you\u2019re not a bot. This helps protect our community", "rate_limited", "bot check"),
    ("Video unavailable. YouTube is requiring a captcha challenge before playback", "rate_limited", "bot check"),
    ("Video unavailable. This content isn't available, try again later. The current session has been "
     "rate-limited by YouTube for up to an hour.", "rate_limited", "session rate limit"),
    ("Unable to download API page: HTTP Error 429: Too Many Requests", "rate_limited", "HTTP 429"),
    ("[download] Got error: HTTP Error 503: Service Unavailable", "network", "server error (HTTP 503)"),
    ("unable to download video data: <urlopen error timed out>", "network", "timed out"),
    ("The read operation timed out", "network", "timed out"),
    ("Did not get any data blocks", "network", "truncated"),
    ("content too short (expected 100 bytes and served 50)", "network", "truncated"),
    ("('Connection broken: IncompleteRead(10 bytes read, 20 more expected)')", "network", "truncated"),
    ("[Errno 104] Connection reset by peer", "network", "connection reset"),
    ("giving up after 10 retries", "network", "I/O error"),
    ("[Errno 101] Network is unreachable", "network", "unreachable"),
    ("Requested format is not available. Use --list-formats for a list of available formats", "failed", None),
    ("Unsupported URL: https://example.com/", "failed", None),
])
def test_classify(message, status, sub):
    failure = fetch.classify("ERROR: " + message)
    assert failure.status == status
    assert failure.permanent == (status == "unavailable")
    assert failure.transient == (status == "network" or sub == "HTTP 429")
    assert failure.bot_check == (sub == "bot check")
    if sub:
        assert failure.reason.startswith(sub + ": ")
    assert message.split()[-1].strip(".") in failure.reason, "the original message is kept"


@pytest.mark.parametrize("message, status, sub", [
    ("[youtube] dQw4w9WgXcQ: Unable to download API page: HTTP Error 403: Forbidden "
     "(caused by <HTTPError 403: Forbidden>)", "rate_limited", "blocked (HTTP 403, not a removed video)"),
    ("[youtube] dQw4w9WgXcQ: Unable to download player 1234abcd: HTTP Error 404: Not Found "
     "(caused by <HTTPError 404: Not Found>)", "failed", "not found (HTTP 404, not a removed video)"),
    ("[youtube] dQw4w9WgXcQ: Unable to download API page: HTTP Error 410: Gone", "failed",
     "gone (HTTP 410, not a removed video)"),
    ("[youtube] dQw4w9WgXcQ: Unable to download webpage: HTTP Error 403: Forbidden", "rate_limited",
     "blocked (HTTP 403, not a removed video)"),
    ("[generic] okvideo0001: Unable to download webpage: HTTP Error 410: Gone (caused by <HTTPError 410: Gone>)",
     "unavailable", "gone (HTTP 410)"),
    ("[generic] okvideo0001: Unable to download webpage: HTTP Error 403: Forbidden", "unavailable",
     "forbidden (HTTP 403)"),
])
def test_classify_trusts_a_403_404_410_only_on_the_primary_page(message, status, sub):
    failure = fetch.classify("ERROR: " + message, stage="extract")
    assert (failure.status, failure.permanent, failure.transient) == (status, status == "unavailable", False)
    assert failure.reason.startswith(sub + ": ")


def test_classify_uses_the_http_status_and_the_stage():
    assert fetch.classify("Unable to download webpage", 404).status == "unavailable"
    assert fetch.classify("Unable to download webpage", 429).status == "rate_limited"
    assert fetch.classify("HTTP Error 404: Not Found", stage="download").status == "failed"
    assert fetch.classify("HTTP Error 502: Bad Gateway", stage="download").transient


def test_classify_drops_the_noise_yt_dlp_appends():
    reason = fetch.classify("ERROR: [generic] x: Unable to download webpage: HTTP Error 404: Not Found "
                            "(caused by <HTTPError 404: Not Found>)").reason
    assert reason == "not found (HTTP 404): [generic] x: Unable to download webpage: HTTP Error 404: Not Found"
    assert fetch.classify("ERROR: [youtube] x: odd; please report this issue on  https://github.com/yt-dlp/"
                          "yt-dlp/issues?q= , filling out the template").reason == "[youtube] x: odd"


def test_retry_after_seconds():
    assert fetch.retry_after_seconds("7") == 7.0
    assert fetch.retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert fetch.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert fetch.retry_after_seconds(None) is None and fetch.retry_after_seconds("soon") is None


def test_backoff_is_jittered_exponential_and_honours_retry_after():
    rng = random.Random(0)
    for attempt, bound in ((1, 1.0), (2, 2.0), (3, 4.0), (8, 10.0)):
        delays = [fetch.backoff_delay(attempt, 1.0, 10.0, rng=rng) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= bound and max(delays) > bound * 0.8
    assert fetch.backoff_delay(1, 1.0, 10.0, retry_after=5, rng=rng) >= 5
    assert fetch.backoff_delay(1, 1.0, 10.0, retry_after=11, rng=rng) is None


def test_equal_jitter_keeps_half_the_bound():
    rng = random.Random(0)
    for attempt, bound in ((1, 2.0), (2, 4.0), (5, 10.0)):
        delays = [fetch.backoff_delay(attempt, 2.0, 10.0, rng=rng, equal_jitter=True) for _ in range(200)]
        assert bound / 2 <= min(delays) < bound * 0.6 and bound * 0.9 < max(delays) <= bound


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_governor_paces_at_the_ceiling():
    clock = FakeClock()
    g = fetch.RateGovernor(ceiling=2.0, clock=clock)
    assert [g.reserve() for _ in range(3)] == [0.0, 0.5, 1.0]
    assert g.reserve(not_after=clock.now + 1.0) is None, "no slot claimed past the deadline"
    assert g.reserve() == 1.5


def test_governor_halves_on_429_and_recovers_additively():
    clock = FakeClock()
    g = fetch.RateGovernor(clock=clock)
    assert g.rate is None and g.reserve() == 0.0 and g.reserve() == 0.0
    g.throttle()
    g.throttle()
    assert g.rate == 0.5
    assert g.reserve() == 0.0 and g.reserve() == 2.0, "a minimum spacing while throttled"
    rates = []
    for _ in range(20):
        g.recover()
        rates.append(g.rate)
    assert rates[:3] == pytest.approx([0.7, 0.9, 1.1]) and rates[-1] is None, "gradual, then unthrottled"
    for _ in range(20):
        g.throttle()
    assert g.rate == pytest.approx(1 / 60)


def test_governor_hold_delays_every_start_and_is_capped():
    clock = FakeClock()
    g = fetch.RateGovernor(clock=clock)
    assert g.hold(30) == 30
    assert g.reserve() == 30.0 and g.reserve() == 30.0, "unlimited: no spacing, but held"
    assert g.reserve(not_after=clock.now + 10) is None
    g.hold(5)
    assert g.reserve() == 30.0, "a shorter hold does not shorten a longer one"
    clock.now += 30
    assert g.reserve() == 0.0
    assert g.hold(3600) == 15 * 60 and g.reserve() == 15 * 60


def test_governor_hold_and_pacing_add_up():
    clock = FakeClock()
    g = fetch.RateGovernor(ceiling=1.0, clock=clock)
    assert g.reserve() == 0.0
    g.hold(10)
    assert [g.reserve() for _ in range(3)] == [10.0, 11.0, 12.0]


def test_governor_recovers_to_its_ceiling():
    g = fetch.RateGovernor(ceiling=1.0, clock=FakeClock())
    g.throttle()
    assert g.rate == 0.5
    for _ in range(10):
        g.recover()
    assert g.rate == 1.0


def test_breaker_counts_consecutive_bot_checks_only():
    b = fetch.BotCheckBreaker()
    b.limit = 3
    for outcome in (True, True, False, True, True):
        b.record(outcome)
    b.check()
    b.record(True)
    with pytest.raises(fetch.BotCheckStop) as info:  # a FetchError FetchClips counts as a bot-check stop
        b.check()
    assert isinstance(info.value, fetch.FetchError) and info.value.status == "rate_limited"
    assert info.value.reason.startswith(fetch.BOT_CHECK_REASON_PREFIX + " after 3 consecutive")
    assert pickle.loads(pickle.dumps(info.value)).reason == info.value.reason


def _format(format_id, ext, height=None, vcodec="none", acodec="none"):
    return dict(format_id=format_id, ext=ext, height=height, width=height and height * 16 // 9, vcodec=vcodec,
                acodec=acodec, url=f"https://127.0.0.1/{format_id}", protocol="https", tbr=height or 128)


M4A, OPUS = _format("140", "m4a", acodec="mp4a.40.2"), _format("251", "webm", acodec="opus")


@pytest.mark.parametrize("formats, chosen", [
    ([_format("18", "mp4", 360, "avc1.42001E", "mp4a.40.2"), _format("398", "mp4", 720, "av01.0.05M.08"),
      _format("136", "mp4", 720, "avc1.4d401f"), _format("247", "webm", 720, "vp9"),
      _format("399", "mp4", 1080, "av01.0.08M.08"), _format("137", "mp4", 1080, "avc1.640028"), M4A, OPUS], "136+140"),
    ([_format("400", "mp4", 1440, "avc1.640032"), _format("137", "mp4", 1080, "avc1.640028"), M4A], "137+140"),
    ([_format("248", "webm", 1080, "vp9"), _format("247", "webm", 720, "vp9"), OPUS], "247+251"),
    ([_format("22", "mp4", 1080, "avc1", "mp4a"), _format("18", "mp4", 360, "avc1", "mp4a")], "18"),
])
def test_format_selector_as_ytdlp_applies_it(formats, chosen):
    # mixed codecs at 720p: H.264; only taller than 720p: the smallest of those, not the biggest
    params = {"format": fetch.format_selector(720), "ffmpeg_location": imageio_ffmpeg.get_ffmpeg_exe(), "quiet": True}
    info = {"id": "x", "title": "x", "formats": formats, "extractor": "t", "extractor_key": "T",
            "webpage_url": "https://127.0.0.1/x"}
    with yt_dlp.YoutubeDL(params) as ydl:
        assert ydl.process_ie_result(info, download=False)["format_id"] == chosen
