"""How a fetch ends, mapped to the taxonomy: stalls, resets and hang-ups anywhere in the transfer
are `network` (retried, and the reason says what happened, with which host, while fetching which
window); undecodable media is `corrupt`; what fits nothing is `failed` with the tool's last
meaningful line. Real yt-dlp and ffmpeg against the fault server on 127.0.0.1 (plain and TLS),
then the mapping itself on reports as the fetch worker writes them."""
import json
import os
import socket

import av
import pytest

import faultserver as fs
from conftest import read_records, run_cli, write_csv
from transforms import fetch, fetch_worker

from test_fetch import FPS, SOURCE_SECONDS, server, source  # noqa: F401 - the same source and fault server

ID = "okvideo0001"
WINDOW = "[18, 32] s"  # fetch(ID, 20, 30) padded by 2 s


def make_fetcher(server, source, *plan, then=None, **options):
    server.add(ID, source)
    server.plan(ID, *plan, then=then)
    settings = dict(url_template=server.url_template(), socket_timeout=2, clip_timeout=60, retries=1,
                    backoff_base=0.05, backoff_cap=5)
    return fetch.Fetcher(fetch.FetchOptions(**{**settings, **options}), worker=fetch.WorkerState())


def fails(fetcher, workdir):
    with pytest.raises(fetch.FetchError) as info:
        fetcher.fetch(ID, 20, 30, str(workdir))
    assert os.listdir(workdir) == [], "nothing may stay behind in the work dir after a failure"
    return info.value


def host(server):
    return server.base_url.split("://")[1]


def seeks(server):
    """Indexes in the server's log of the ranged requests ffmpeg makes after reading the index."""
    return [i for i, (_, rng, _) in enumerate(server.stats(ID).log) if rng and rng != "bytes=0-"]


def decoded_frames(path):
    with av.open(path) as c:
        return [fs.frame_index(f) for f in c.decode(video=0)]


# --- stalls, resets, hang-ups: network, retried, and said where --------------------------------

def test_a_stall_mid_body_is_network_and_retried(server, source, tmp_path):
    # every answer stops after 64 kB and goes silent: the keyframe seek of each attempt stalls
    error = fails(make_fetcher(server, source, then=fs.stall(64 * 1024)), tmp_path)

    assert (error.status, error.permanent, error.attempts) == ("network", False, 2)
    assert error.reason.startswith(f"timed out: no data for 2 s from {host(server)} while fetching {WINDOW}")
    stats, stalled = server.stats(ID), seeks(server)
    assert len(stalled) == 2, "one stalled seek per attempt"
    # ffmpeg gave up after the 2 s socket timeout (not the 60 s clip timeout), then the retry asked again
    assert stats.times[stalled[0] + 1] - stats.times[stalled[0]] >= 2.0
    assert stats.log[stalled[0] + 1] == ("GET", None, 200), "the retry starts over with the extraction"


def test_a_stall_then_a_good_answer_succeeds_on_the_retry(server, source, tmp_path):
    result = make_fetcher(server, source, None, None, fs.stall(64 * 1024)).fetch(ID, 20, 30, str(tmp_path))

    assert result.attempts == 2 and result.segment and result.fetch_range == (18.0, 32.0)
    frames = decoded_frames(result.path)
    assert frames[0] == 18 * FPS and frames[-1] == 32 * FPS - 1 and frames == list(range(frames[0], frames[-1] + 1))
    assert [status for _, _, status in server.stats(ID).log] == [200, 206, 206, 200, 206, 206]


def test_a_reset_mid_body_is_network_and_retried(server, source, tmp_path):
    error = fails(make_fetcher(server, source, then=fs.reset(64 * 1024)), tmp_path)

    assert (error.status, error.permanent, error.attempts) == ("network", False, 2)
    assert error.reason.startswith(f"connection reset: {host(server)} reset the connection while fetching {WINDOW}")
    assert "Connection reset by peer" in error.reason
    assert len(seeks(server)) == 2, "one reset seek per attempt"


def test_a_server_that_hangs_up_without_an_answer_is_network(server, source, tmp_path):
    # ffmpeg exits with code 187 (AVERROR_EOF) and says only "Error reading HTTP response: End of file"
    error = fails(make_fetcher(server, source, None, fs.HANGUP, None, fs.HANGUP), tmp_path)

    assert (error.status, error.attempts) == ("network", 2)
    assert error.reason.startswith(f"connection closed: {host(server)} closed the connection without an answer "
                                   f"while fetching {WINDOW}")
    assert error.reason.endswith("ffmpeg: Error reading HTTP response: End of file")
    assert [status for _, _, status in server.stats(ID).log] == [200, 0, 200, 0]


def test_a_stall_over_tls_is_network(source, tmp_path):
    # YouTube's media is https: ffmpeg's TLS goes through the relay's CONNECT tunnel, end to end
    tls = fs.self_signed_tls(str(tmp_path))
    # these replace ours; the worker still adds the read timeout (and the relay)
    ffmpeg_args = ["-loglevel", "warning", "-nostats", "-xerror", "-ca_file", str(tmp_path / "cert.pem")]
    trust = (("nocheckcertificate", True), ("external_downloader_args", {"ffmpeg_i": ffmpeg_args}))
    work = tmp_path / "work"
    with fs.FaultServer(tls=tls) as server:
        assert server.base_url.startswith("https://")
        good = make_fetcher(server, source, ytdlp_opts=trust).fetch(ID, 20, 30, str(work / "a"))
        assert good.attempts == 1 and good.segment and decoded_frames(good.path)[0] == 18 * FPS
        error = fails(make_fetcher(server, source, then=fs.stall(64 * 1024), ytdlp_opts=trust), work / "b")
    assert (error.status, error.attempts) == ("network", 2)
    assert error.reason.startswith(f"timed out: no data for 2 s from {host(server)} while fetching {WINDOW}")


def test_a_stall_behind_a_proxy_is_still_network(server, source, tmp_path):
    # with --proxy ffmpeg goes through it, not the relay: its lines alone tell the transfer broke off
    proxy = fetch_worker.Relay(timeout=30)  # here just a forwarding HTTP proxy
    try:
        error = fails(make_fetcher(server, source, then=fs.stall(64 * 1024), proxy=proxy.url), tmp_path)
    finally:
        proxy.close()

    assert (error.status, error.attempts) == ("network", 2)
    assert error.reason.startswith(f"truncated: the transfer from {host(server)} broke off while fetching {WINDOW}"
                                   " (ffmpeg: ")
    assert len(seeks(server)) == 2


def test_a_stall_in_the_pipeline_is_a_network_record(tmp_path, source, monkeypatch):
    """The issue as reported: --source youtube, 64 kB of the ranged answer then silence."""
    monkeypatch.setattr(fetch, "_WORKER", fetch.WorkerState())
    ann = write_csv(tmp_path / "val.csv", "label,youtube_id,time_start,time_end,split\n"
                    "abseiling,stalled0064,20,30,val\nabseiling,okvideo0001,20,30,val\n")
    out = tmp_path / "out"
    with fs.FaultServer() as server:
        for yid in ("stalled0064", "okvideo0001"):
            server.add(yid, source)
        server.plan("stalled0064", then=fs.stall(64 * 1024))
        assert run_cli("--dataset", "kinetics400", "--annotations", ann, "--output", out, "--source", "youtube",
                       "--url-template", server.url_template(), "--retries", "1", "--socket-timeout", "2",
                       "--clip-timeout", "60", "--steps", "fetch,filelists") == 0
        requests = server.stats("stalled0064").requests
    recs = {r["youtube_id"]: r for r in read_records(out)}
    assert recs["okvideo0001"]["status"] == "ok"
    stalled = recs["stalled0064"]
    assert (stalled["status"], stalled["attempts"]) == ("network", 2) and not stalled.get("permanent")
    assert stalled["reason"].startswith(f"timed out: no data for 2 s from {host(server)} while fetching {WINDOW}")
    assert requests == 6, "two attempts of three requests"
    assert json.loads((out / "summary.json").read_text())["total"] == {"network": 1, "ok": 1}


# --- bad media and what fits nothing ------------------------------------------------------------

def test_media_ffmpeg_cannot_read_is_corrupt_and_not_retried(server, tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(300_000))
    error = fails(make_fetcher(server, garbage), tmp_path / "work")

    assert (error.status, error.attempts) == ("corrupt", 1)
    assert error.reason == f"ffmpeg cannot read the media from {host(server)} while fetching {WINDOW}: " \
                           "moov atom not found"


def test_an_ffmpeg_failure_that_fits_nothing_is_failed_with_its_last_line(server, source, tmp_path):
    bad_args = (("external_downloader_args", {"ffmpeg_i": ["-no_such_option"]}),)
    error = fails(make_fetcher(server, source, ytdlp_opts=bad_args), tmp_path)

    assert (error.status, error.attempts) == ("failed", 1), "not retried"
    assert error.reason == (f"ffmpeg failed (exit code 8) while fetching {WINDOW}: "
                            "Error splitting the argument list: Option not found")


# --- the relay on its own -----------------------------------------------------------------------

def _through(relay, target, request, read_for=None):
    """Send `request` through the relay to `target` ("host:port", tunnelled by CONNECT); the answer."""
    with socket.create_connection(("127.0.0.1", int(relay.url.rsplit(":", 1)[1]))) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.sendall(request)
        s.settimeout(read_for or 10)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except TimeoutError:
            pass
        except ConnectionResetError:
            data += b"<reset>"
    relay.settle()
    return data


def test_the_relay_tunnels_and_notes_stalls_and_resets(server, source):
    server.add(ID, source)
    relay = fetch_worker.Relay(timeout=1)
    target = host(server)
    get = f"GET /{ID}.mp4 HTTP/1.1\r\nHost: {target}\r\nRange: bytes=0-99\r\nConnection: close\r\n\r\n".encode()

    answer = _through(relay, target, get)
    with open(source, "rb") as f:
        assert answer.startswith(b"HTTP/1.0 206") or answer.startswith(b"HTTP/1.1 206")
        assert answer.endswith(f.read(100))
    assert relay.faults == []

    server.plan(ID, fs.stall(10))
    _through(relay, target, get.replace(b"0-99", b"0-"), read_for=1.5)  # the client gives up after 1.5 s
    (stall,) = relay.faults
    assert stall["event"] == "stall" and stall["host"] == target and stall["idle"] >= 0.5

    server.plan(ID, fs.reset(10))
    assert _through(relay, target, get.replace(b"0-99", b"0-")).endswith(b"<reset>"), "the reset is passed on"
    assert relay.last_fault()["event"] == "reset" and relay.last_fault()["error"] == "Connection reset by peer"

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with socket.create_connection(("127.0.0.1", int(relay.url.rsplit(":", 1)[1]))) as s:
        s.sendall(f"GET http://127.0.0.1:{port}/x.mp4 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 502")
    relay.settle()
    assert relay.last_fault() == {"event": "connect", "host": f"127.0.0.1:{port}", "error": "Connection refused",
                                  "bytes": 0}
    relay.close()


# --- the mapping, on reports as the worker writes them ----------------------------------------

def ffmpeg_report(lines, transfer=None, relay=True, code=183, segment=True):
    return {"ok": False, "stage": "download", "message": f"ERROR: ffmpeg exited with code {code}",
            "segment": segment, "host": "rr1.example.com", "tool": "ffmpeg", "exit_code": code,
            "lines": lines, "relay": relay, "transfer": transfer, "http_status": None, "retry_after": None}


def ytdlp_report(message, stage="download", segment=False):
    return {"ok": False, "stage": stage, "message": message, "segment": segment, "host": "rr1.example.com",
            "http_status": None, "retry_after": None}


IN = "while fetching [18, 32] s"


@pytest.mark.parametrize("report, status, reason", [
    (ffmpeg_report(["Packet corrupt (stream = 0, dts = 1).", "corrupt input packet in stream 0"],
                   {"event": "stall", "host": "rr1.example.com", "idle": 10.02, "bytes": 65755, "body": 65536,
                    "length": 580743}),
     "network", f"timed out: no data for 10 s from rr1.example.com {IN} (after 64 KiB of 567 KiB)"),
    (ffmpeg_report(["partial file"], {"event": "stall", "host": "rr1.example.com", "idle": 6.0, "bytes": 5000}),
     "network", f"timed out: no data for 6.0 s from rr1.example.com {IN} (after 5 KiB)"),
    (ffmpeg_report(["partial file"], {"event": "reset", "host": "rr1.example.com", "error": "Connection reset by peer",
                                      "bytes": 3 << 20}),
     "network", f"connection reset: rr1.example.com reset the connection {IN} (after 3.0 MiB; "
                "Connection reset by peer)"),
    (ffmpeg_report(["Server returned 5XX Server Error reply"],
                   {"event": "connect", "host": "rr1.example.com", "error": "Connection refused", "bytes": 0}),
     "network", f"connection refused: cannot connect to rr1.example.com {IN}: Connection refused"),
    (ffmpeg_report([], {"event": "connect", "host": "rr1.example.com", "error": "cannot resolve the name "
                                                                              "(Name or service not known)"}),
     "network", f"DNS: cannot connect to rr1.example.com {IN}: cannot resolve the name (Name or service not known)"),
    (ffmpeg_report(["Stream ends prematurely at 423743, should be 830279"]),
     "network", f"truncated: rr1.example.com ended the transfer early {IN}: ffmpeg: Stream ends prematurely at "
                "423743, should be 830279"),
    (ffmpeg_report(["Error reading HTTP response: End of file", "Error opening input files: End of file"], code=187),
     "network", f"connection closed: rr1.example.com closed the connection without an answer {IN}: ffmpeg: "
                "Error reading HTTP response: End of file"),
    (ffmpeg_report(["Connection to tcp://rr1.example.com:443 failed: Connection refused"]),
     "network", f"connection refused: rr1.example.com refused the connection {IN}: ffmpeg: Connection to "
                "tcp://rr1.example.com:443 failed: Connection refused"),
    (ffmpeg_report(["Failed to resolve hostname rr1.example.com: Name or service not known"]),
     "network", f"DNS: cannot resolve rr1.example.com {IN}: ffmpeg: Failed to resolve hostname rr1.example.com: "
                "Name or service not known"),
    (ffmpeg_report(["IO error: Connection timed out", "Packet corrupt (stream = 0, dts = 1)."], relay=False),
     "network", f"timed out: no data for 10 s from rr1.example.com {IN}: ffmpeg: IO error: Connection timed out"),
    (ffmpeg_report(["error:0A000086:SSL routines::certificate verify failed"]),
     "network", f"TLS: TLS failure with rr1.example.com {IN}: ffmpeg: error:0A000086:SSL routines::certificate "
                "verify failed"),
    (ffmpeg_report(["Packet corrupt (stream = 0, dts = 1).", "corrupt input packet in stream 0"], relay=False),
     "network", f"truncated: the transfer from rr1.example.com broke off {IN} (ffmpeg: Packet corrupt "
                "(stream = 0, dts = 1).)"),
    (ffmpeg_report(["Packet corrupt (stream = 0, dts = 1).", "corrupt input packet in stream 0"]),
     "corrupt", f"ffmpeg cannot read the media from rr1.example.com {IN}: Packet corrupt (stream = 0, dts = 1)."),
    (ffmpeg_report(["moov atom not found", "Error opening input: Invalid data found when processing input"]),
     "corrupt", f"ffmpeg cannot read the media from rr1.example.com {IN}: moov atom not found"),
    (ffmpeg_report(["HTTP error 403 Forbidden", "Error opening input: Server returned 403 Forbidden (access denied)"]),
     "failed", f"media request refused (HTTP 403): rr1.example.com answered HTTP 403 {IN}: ffmpeg: "
               "HTTP error 403 Forbidden"),
    (ffmpeg_report(["HTTP error 429 Too Many Requests"]),
     "rate_limited", f"HTTP 429: rr1.example.com answered HTTP 429 {IN}: ffmpeg: HTTP error 429 Too Many Requests"),
    (ffmpeg_report(["Server returned 5XX Server Error reply"]),
     "network", f"server error (HTTP 5XX): rr1.example.com answered HTTP 5XX {IN}: ffmpeg: Server returned 5XX "
                "Server Error reply"),
    (ffmpeg_report(["Server returned 4XX Client Error, but not one of 40{0,1,3,4}"]),
     "failed", f"media request refused (HTTP 4XX): rr1.example.com answered HTTP 4XX {IN}: ffmpeg: Server returned "
               "4XX Client Error, but not one of 40{0,1,3,4}"),
    (ffmpeg_report(["[mp4 @ 0x1] Could not write header (incorrect codec parameters ?): Invalid argument",
                    "Error opening output file media.mp4.part."], code=234),
     "failed", f"ffmpeg failed (exit code 234) {IN}: Error opening output file media.mp4.part."),
    (ffmpeg_report([], code=-9), "failed", f"ffmpeg failed (killed by signal 9) {IN}: no message"),
    (ytdlp_report("ERROR: \r[download] Got error: HTTPConnectionPool(host='rr1.example.com', port=443): "
                  "Read timed out."),
     "network", "timed out: no data for 10 s from rr1.example.com while fetching the whole source: [download] Got "
                "error: HTTPConnectionPool(host='rr1.example.com', port=443): Read timed out."),
    (ytdlp_report("ERROR: \r[download] Got error: ('Connection broken: ConnectionResetError(104, \"Connection reset "
                  "by peer\")')"),
     "network", "connection reset: rr1.example.com reset the connection while fetching the whole source: "
                "[download] Got error: ('Connection broken: ConnectionResetError(104, \"Connection reset by peer\")')"),
    (ytdlp_report("ERROR: [generic] x: Unable to download webpage: <urlopen error [Errno 111] Connection refused>",
                  stage="extract"),
     "network", "connection refused: rr1.example.com refused the connection while reading the video page: "
                "[generic] x: Unable to download webpage: <urlopen error [Errno 111] Connection refused>"),
    (ytdlp_report("ERROR: [download] Got error: HTTP Error 503: Service Unavailable"),
     "network", "server error (HTTP 503): rr1.example.com answered HTTP 503 while fetching the whole source: "
                "[download] Got error: HTTP Error 503: Service Unavailable"),
    (ytdlp_report("ERROR: [generic] x: Requested format is not available. Use --list-formats for a list of "
                  "available formats"),
     "failed", "[generic] x: Requested format is not available. Use --list-formats for a list of available formats"),
    (ytdlp_report("ERROR: Postprocessing: Conversion failed!"), "failed", "Postprocessing: Conversion failed!"),
    ({"ok": False, "stage": "worker", "message": "fetch worker killed by SIGKILL: no message"},
     "failed", "fetch worker killed by SIGKILL: no message"),
])
def test_every_ending_maps_to_the_taxonomy(report, status, reason):
    failure = fetch.classify_report(report, (18.0, 32.0), socket_timeout=10)
    assert (failure.status, failure.reason) == (status, reason)
    assert failure.transient == (status == "network" or reason.startswith("HTTP 429"))
    assert not failure.permanent
