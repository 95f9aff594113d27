"""Read an offline W&B run file (``run-<id>.wandb``) back: wandb has no public reader for it.

The file is a LevelDB-style log (a 7-byte ``:W&B`` header, then 32 KiB blocks of records with 7-byte headers:
checksum, length, type FULL/FIRST/MIDDLE/LAST) whose payloads are ``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> Iterator:
    """Every ``Record`` of the run file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        chunk, pos = data[pos:pos + length], pos + length
        if kind == FULL:
            payload = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        elif kind == LAST:
            payload, pending = pending + chunk, b""
        else:  # zero padding at the end of a block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def summarize(path: str | Path) -> dict:
    """What a test checks: run id/group, config keys, history keys, artifacts (name, type), stats count."""
    import json

    out = {"config": {}, "history_keys": set(), "artifacts": [], "stats": 0, "run_id": None, "group": None,
           "resumed": False}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run_id"], out["group"] = record.run.run_id, record.run.run_group
            out["resumed"] = out["resumed"] or record.run.resumed
            for item in record.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                if item.key:
                    out["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            out["history_keys"].update(item.key or "/".join(item.nested_key) for item in record.history.item)
        elif kind == "artifact":
            out["artifacts"].append((record.artifact.name, record.artifact.type))
        elif kind == "stats":
            out["stats"] += 1
    return out
