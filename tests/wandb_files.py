"""Read an offline W&B run file (``run-<id>.wandb``) back into Python.

W&B stores runs in the LevelDB log format (32 KiB blocks, 7-byte record
headers) after a 7-byte file header; each record is a ``wandb_internal_pb2.Record``.
wandb 0.31 dropped its Python reader, so the tests carry this small one.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, chunks = HEADER, []
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        pos += HEADER
        if kind == 0 and length == 0:
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        chunk = data[pos:pos + length]
        pos += length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            chunks = [chunk]
        elif kind == MIDDLE:
            chunks.append(chunk)
        elif kind == LAST:
            chunks.append(chunk)
            yield b"".join(chunks)


def read_run(path: Path, wait_s: float = 60.0) -> dict:
    """``{"config": {...}, "history": [rows], "summary": {...}}`` of an offline run, read once the run's
    exit record is in the file: W&B's service may still be writing the last records (the final
    summary) after ``run.finish()`` returned, which made a test that read at once fail now and then."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        out = _read(Path(path).read_bytes())
        if out["exited"]:
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} has no exit record after {wait_s:.0f} s: the W&B run did not finish")
        time.sleep(0.1)


def _read(data: bytes) -> dict:
    out = {"config": {}, "history": [], "summary": {}, "exited": False}
    for payload in _payloads(data):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            for i in rec.summary.update:
                out["summary"][i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
        elif kind == "config":
            for i in rec.config.update:
                out["config"][i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
        elif kind == "run":
            for i in rec.run.config.update:
                out["config"][i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
        elif kind == "exit":
            out["exited"] = True
    return out


def find_run_file(output_dir: Path) -> Path:
    files = sorted(Path(output_dir).glob("wandb/*run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one W&B run under {output_dir}, found {files}"
    return files[0]
