"""One yt-dlp fetch in a child process: ``python -m transforms.fetch_worker`` < job.json.

Started by transforms.fetch in its own process group (a timeout kills it with the ffmpeg it runs);
should the parent die, a watcher thread kills the group. The job (JSON on stdin) holds the URL, the
wanted window (or null), the YoutubeDL parameters and the parent's pid; the report is one JSON line
on stdout. Everything else, ffmpeg's messages included, goes to stderr, which the parent points at
the job's log file.
"""
import json
import os
import re
import signal
import sys
import threading
import time

_PARTIAL_REFUSED = re.compile(r"cannot be partially downloaded|downloading the video partially", re.I)
_FFMPEG_EXIT = re.compile(r"ffmpeg exited with code", re.I)
_FFMPEG_CAUSE = re.compile(r"HTTP error \d{3}.*|Stream ends prematurely.*|Connection (?:refused|reset|timed out).*"
                           r"|Server returned .*|Input/output error|Invalid data found.*")


class _Logger:
    def debug(self, msg):
        pass

    info = debug

    def warning(self, msg):
        print(msg, file=sys.stderr, flush=True)

    error = warning


def fetch(job):
    import yt_dlp
    from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor
    from yt_dlp.utils import download_range_func

    location = getattr(FFmpegPostProcessor, "_ffmpeg_location", None)
    if location is not None and job["params"].get("ffmpeg_location"):
        # yt-dlp chooses its ffmpeg downloader for ranges by probing PATH unless this is set, as its CLI
        # does (yt-dlp #2191); without it, a ranged fetch falls back to a full download
        location.set(job["params"]["ffmpeg_location"])
    stage = "extract"
    try:
        ydl = yt_dlp.YoutubeDL({**job["params"], "logger": _Logger()})
        info = ydl.extract_info(job["url"], download=False, process=False)  # the one extraction
        stage = "download"
        segment = job["window"] is not None
        if segment:
            ydl.params["download_ranges"] = download_range_func(None, [tuple(job["window"])])
        try:
            done = ydl.process_ie_result(info, download=True)  # picks the format, downloads it
        except yt_dlp.utils.DownloadError as e:
            if not (segment and _PARTIAL_REFUSED.search(str(e))):
                raise
            del ydl.params["download_ranges"]
            segment = False
            done = ydl.process_ie_result(info, download=True)
    except Exception as e:
        return _error(e, stage, job["log"])
    return {"ok": True, "path": done["requested_downloads"][0]["filepath"], "format_id": done.get("format_id"),
            "segment": segment, "version": yt_dlp.version.__version__}


def _error(exc, stage, log_path):
    message = str(exc)
    if _FFMPEG_EXIT.search(message):
        with open(log_path, errors="replace") as f:
            causes = _FFMPEG_CAUSE.findall(f.read())
        if causes:
            message = f"{message}: {causes[0].strip()}"
    http = _http_error(exc)
    return {"ok": False, "stage": stage, "message": message,
            "http_status": http.status if http else None,
            "retry_after": http.response.headers.get("Retry-After") if http else None}


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
