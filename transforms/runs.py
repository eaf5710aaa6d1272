"""Sorted runs through storage: a grouped sort whose elements never travel through a shuffle.

A shuffle (GroupByKey) delivers each group to a worker whole, and some runners deliver a worker's
whole share of a shuffle at once (the local FnApiRunner sends it as one message), so grouping
full records would make a worker's memory grow with the dataset. Instead each bundle writes its
elements, sorted by key within each group, to one file of its own under
{output}/_runs/{run_id}/ (a new file whenever about FLUSH_BYTES are buffered), and only
(group, piece) pairs, a piece being (file, offset, length), are shuffled. The worker that gets a
group reads its pieces and merges them. Memory: FLUSH_BYTES per bundle while writing, one group
while merging.

The files are JSON lines ([key, payload] each; keys and payloads of JSON types, tuples read back
as lists), removed by the launcher at the end of the run, and at the start of the next run when a
killed run left them.

The same folder holds spilled rows (`Spill`, `read_spilled`): a stream of elements made in one
place (the annotation reader) written to rows-*.pickle files as it is made, so that only small
pieces (file, offset, length) go through the shuffle that spreads them over the workers, and
each worker reads its pieces' elements where it uses them.
"""
import array
import heapq
import io
import json
import operator
import pickle
import uuid

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from transforms import storage

RUNS = "_runs"
FLUSH_BYTES = 8 << 20
PIECES = 1000  # about how many pieces a spill is cut into (fewer when it has fewer elements)
PIECE_ELEMENTS = 1000  # the most elements one piece holds


def runs_dir(output, run_id=None):
    root = storage.join(output, RUNS)
    return storage.join(root, run_id) if run_id else root


class WriteRuns(beam.DoFn):
    """(group, (sort key, payload)) in; (group, piece) out, a piece per group and file written.

    `size(payload)`: about how many bytes the payload takes (for the flush threshold)."""

    def __init__(self, folder, size, flush_bytes=FLUSH_BYTES):
        self.folder = folder
        self.size = size
        self.flush_bytes = flush_bytes

    def start_bundle(self):
        self.pending, self.buffered = {}, 0

    def process(self, element):
        group, (key, payload) = element
        self.pending.setdefault(group, []).append((key, payload))
        self.buffered += self.size(payload) + 64
        if self.buffered >= self.flush_bytes:
            yield from self._flush()

    def finish_bundle(self):
        for out in self._flush():
            yield GlobalWindows.windowed_value(out)

    def _flush(self):
        if not self.pending:
            return []
        url = storage.join(self.folder, f"{uuid.uuid4().hex}.jsonl")
        chunks, out, offset = [], [], 0
        for group, items in self.pending.items():
            items.sort(key=operator.itemgetter(0))
            data = "".join(json.dumps([key, payload], ensure_ascii=False, separators=(",", ":")) + "\n"
                           for key, payload in items).encode("utf-8")
            chunks.append(data)
            out.append((group, (url, offset, len(data))))
            offset += len(data)
        storage.write_bytes(url, b"".join(chunks))
        self.pending, self.buffered = {}, 0
        return out


def read_piece(piece):
    """[key, payload] pairs of one piece, in key order."""
    url, offset, length = piece
    data = storage.read_range(url, offset, length)
    return [json.loads(line) for line in data.split(b"\n") if line]  # not splitlines(): U+2028 is no line end here


def merged(pieces):
    """The (key, payload) pairs of a group's pieces, in key order."""
    return heapq.merge(*(read_piece(p) for p in sorted(pieces)), key=operator.itemgetter(0))


def remove(output, run_id=None):
    """Remove the run's files (every run's when `run_id` is None: what killed runs left)."""
    storage.remove_tree(runs_dir(output, run_id), prune_parent=bool(run_id))


class Spill:
    """Elements written, in order, to files of about `flush_bytes` under `folder` (each element
    pickled on its own), then cut into pieces (file, offset, length) of consecutive elements:
    about `pieces` of them, each of at most `piece_elements` elements and none across files.
    Memory: `flush_bytes` and 8 bytes an element (its end offset)."""

    def __init__(self, folder, flush_bytes=None, pieces=None, piece_elements=None):
        self.folder = folder
        self.flush_bytes = flush_bytes or FLUSH_BYTES
        self.target = pieces or PIECES
        self.most = piece_elements or PIECE_ELEMENTS
        self.files = []  # (url, end offsets of its elements)
        self.count = 0
        self.buf, self.ends = bytearray(), array.array("Q")

    def add(self, element):
        self.buf += pickle.dumps(element, protocol=pickle.HIGHEST_PROTOCOL)
        self.ends.append(len(self.buf))
        if len(self.buf) >= self.flush_bytes:
            self._flush()

    def _flush(self):
        if not self.ends:
            return
        url = storage.join(self.folder, f"rows-{uuid.uuid4().hex}.pickle")
        storage.write_bytes(url, bytes(self.buf))
        self.files.append((url, self.ends))
        self.count += len(self.ends)
        self.buf, self.ends = bytearray(), array.array("Q")

    def pieces(self):
        """Write what is buffered; the pieces of every element added, in order."""
        self._flush()
        per = min(self.most, max(1, -(-self.count // self.target)))
        for url, ends in self.files:
            for i in range(0, len(ends), per):
                start = ends[i - 1] if i else 0
                yield url, start, ends[min(i + per, len(ends)) - 1] - start


def read_spilled(piece):
    """The elements of one piece of a Spill, in order."""
    url, offset, length = piece
    data = storage.read_range(url, offset, length)
    if len(data) != length:
        raise OSError(f"{url}: {len(data)} bytes from offset {offset}, not {length}")
    f = io.BytesIO(data)
    while f.tell() < length:
        yield pickle.load(f)
