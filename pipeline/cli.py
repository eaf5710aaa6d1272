"""kinetics-prep: the launcher. Resolves the configuration, checks inputs, runs the pipeline,
prints progress from the workers' tallies and a summary at the end."""
import contextlib
import json
import logging
import re
import sys
import warnings

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TestOptions

from pipeline import build, demo
from pipeline.options import UsageError, resolve
from pipeline.progress import Progress
from transforms import cache, fetch, runs, storage, tally
from transforms.reader import AnnotationError, describe, open_sources, read_header
from transforms.records import STATUSES
from transforms.writers import IncompleteRun


class PreflightError(Exception):
    pass


NOISY_LOGGERS = ("gcsfs", "google", "google.auth", "urllib3", "fsspec", "aiohttp")


@contextlib.contextmanager
def quiet_loggers(names=NOISY_LOGGERS):
    """Silence the storage clients' own logging and warnings (credential searches, retries) for a
    while, unless the log level is DEBUG; restore them after."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(n) for n in names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, saved):
            lg.setLevel(level)


def check_annotations(url):
    """Open every CSV behind `url` (a tarball is streamed once) and read its header row."""
    try:
        storage.check_reachable(url)
        for _, f in open_sources([url]):
            read_header(f)
    except AnnotationError as e:
        raise PreflightError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - any reader failure is the same user error
        raise PreflightError(f"cannot read annotations {url}: {describe(e)}") from None


def check_output(url):
    probe = storage.join(url, "_ledger", ".writable")
    try:
        storage.check_reachable(url)
        storage.write_bytes(probe, b"")
        storage.remove(probe)
    except Exception as e:  # noqa: BLE001
        raise PreflightError(f"cannot write to --output {url}: {describe(e)}") from None


def preflight(settings):
    """Fail fast, in one line, on inputs that cannot be read or an output that cannot be written."""
    with quiet_loggers():
        for url in settings.reading.annotations:
            check_annotations(url)
        if "fetch" in settings.outputs.steps and "youtube" in settings.sources.names:
            try:
                fetch.preflight(settings.fetch)
            except RuntimeError as e:
                raise PreflightError(str(e)) from None
        check_output(settings.outputs.output)


def error_behind(e, cls):
    """The message of the `cls` exception behind an exception a runner raised (found by type along
    its causes, else in its text), without the runner's " [while running ...]"; None if none."""
    seen = []
    while e is not None and e not in seen:
        if isinstance(e, cls):
            return re.sub(r"\s*\[while running .*\]$", "", str(e))
        seen.append(e)
        e = e.__cause__ or e.__context__
    found = re.search(rf"{cls.__name__}: ([^\n]+?)(?:\s*\[while running [^\n]*\])?$", str(seen[0]) if seen else "",
                      re.MULTILINE)
    return found.group(1).strip() if found else None


class RunError(Exception):
    """The job stopped for a reason the launcher says in one line (an output it cannot write, or
    records the runner did not deliver to the outputs)."""


class _DropAnnotationErrors(logging.Filter):
    """Keeps the runner from logging the traceback of an AnnotationError or a WriteError; the
    launcher says it in one line (a worker process's traceback arrives as a log message)."""

    def filter(self, record):
        if record.exc_info and isinstance(record.exc_info[1], (AnnotationError, storage.WriteError, IncompleteRun)):
            return False
        message = record.getMessage()
        return "WriteError: " not in message and "IncompleteRun: " not in message


@contextlib.contextmanager
def no_annotation_tracebacks():
    handlers = list(logging.getLogger().handlers)
    drop = _DropAnnotationErrors()
    for h in handlers:
        h.addFilter(drop)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(drop)


def beam_options(beam_args):
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append("--runner=FnApiRunner")
    return PipelineOptions(args)


def summary_table(result):
    splits = result["splits"]
    statuses = [s for s in STATUSES if s in result["total"]]
    rows = [[name] + [str(counts.get(s, 0)) for s in statuses] + [str(sum(counts.values()))]
            for name, counts in list(splits.items()) + [("total", result["total"])]]
    header = ["split"] + statuses + ["clips"]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header)] + [fmt(r) for r in rows])


def bot_check_stops(result):
    """How many clips workers refused to fetch after repeated bot checks: the run's Beam counter
    (committed, where the runner keeps those; else attempted)."""
    namespace, name = fetch.BOT_CHECK_COUNTER
    found = result.metrics().query(MetricsFilter().with_namespace(namespace).with_name(name))["counters"]
    total = 0
    for counter in found:
        try:
            value = counter.committed
        except Exception:  # noqa: BLE001 - a runner without committed metrics
            value = None
        total += value if value is not None else (counter.attempted or 0)
    return total


def check_remote_paths(settings, options):
    """Dataflow workers cannot see the launcher's disk: every path they read or write must be a URL."""
    runner = str(options.view_as(StandardOptions).runner or "")
    if "dataflow" not in runner.lower():
        return
    sources, fetching = settings.sources, "fetch" in settings.outputs.steps
    paths = [("--annotations", u) for u in settings.reading.annotations] + [("--output", settings.outputs.output)]
    if fetching and sources.source != "youtube" and sources.video_root:
        paths.append(("--video-root", sources.video_root))
    if fetching and isinstance(sources.cvdf_parts, str) and storage.normalize(sources.cvdf_parts) != sources.video_root:
        paths.append(("--cvdf-parts", sources.cvdf_parts))
    if settings.fetch.cookies:
        paths.append(("--cookies", settings.fetch.cookies))
    if sources.clip_cache:
        paths.append(("--clip-cache", sources.clip_cache))
    local = [f"{flag} {url}" for flag, url in paths if storage.is_local(url)]
    if local:
        raise UsageError(f"{runner} workers cannot read this machine's files; upload them and pass "
                         f"gs:// URLs: {'; '.join(local)}")


def dry_run(options):
    return bool(options.view_as(TestOptions).dry_run)


def run(settings, options):
    """Run the pipeline with progress lines; the summary, or None for a dry run (nothing ran)."""
    p = beam.Pipeline(options=options)
    build.build(p, settings)
    if dry_run(options):
        p.run()
        return None, 0
    out = settings.outputs.output
    tally.remove(out)  # tallies and sorted runs a killed run left
    runs.remove(out)
    progress = Progress(settings)
    progress.start()
    try:
        with no_annotation_tracebacks():
            result = p.run()
            result.wait_until_finish()
    except Exception as e:
        message = error_behind(e, AnnotationError)
        if message is not None:
            raise AnnotationError(message) from None
        stopped = error_behind(e, storage.WriteError) or error_behind(e, IncompleteRun)
        if stopped is None:
            raise
        raise RunError(stopped) from None
    finally:
        progress.stop()
        tally.remove(out, settings.run_id)
        runs.remove(out, settings.run_id)
    return json.loads(storage.read_bytes(storage.join(out, "summary.json"))), bot_check_stops(result)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings, args, beam_args = resolve(argv)
    except UsageError as e:
        print(f"kinetics-prep: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(args.log_level)
    options = beam_options(beam_args)
    try:
        check_remote_paths(settings, options)
    except UsageError as e:
        print(f"kinetics-prep: error: {e}", file=sys.stderr)
        return 2
    try:
        if settings.demo:
            demo.prepare(settings)
        if not dry_run(options):
            preflight(settings)
    except (PreflightError, AnnotationError) as e:
        print(f"kinetics-prep: error: {e}", file=sys.stderr)
        return 1
    outputs = settings.outputs
    print(f"kinetics-prep: {settings.dataset}: {', '.join(settings.reading.annotations)} -> {outputs.output} "
          f"(steps {','.join(outputs.steps)})", file=sys.stderr)
    if not dry_run(options):
        storage.sweep_temp_files(outputs.output, flat=outputs.flat)
        cache.sweep(settings.sources.clip_cache)
    try:
        result, stopped = run(settings, options)
    except (AnnotationError, RunError) as e:
        print(f"kinetics-prep: error: {e}", file=sys.stderr)
        return 1
    if result is None:
        print(f"dry run: the {options.view_as(StandardOptions).runner} job was built and validated; "
              "nothing ran and nothing was written")
        return 0
    if stopped:
        print(f"YouTube bot checks stopped fetching: {stopped:,} clips recorded rate_limited without a "
              "request; pass --cookies FILE and run the same command again to fetch them.")
    print(summary_table(result))
    print(f"outputs: {outputs.output} (report.html, manifest/, failures.csv, summary.json, label_map.txt"
          + (", file lists" if "filelists" in outputs.steps else "")
          + (", shards/" if "shards" in outputs.steps else "") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
