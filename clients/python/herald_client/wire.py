"""The Confluent wire format herald reads and writes: magic byte 0, a
4-byte big-endian schema id, then the Avro binary datum."""

from __future__ import annotations

import io
import json
import struct
from importlib import resources
from typing import Callable, Dict, Optional, Tuple

import fastavro

MAGIC = 0


def _bundled(name: str):
    text = resources.files("herald_client").joinpath("schemas", name).read_text()
    return fastavro.parse_schema(json.loads(text)), text


REQUEST_SCHEMA, REQUEST_SCHEMA_TEXT = _bundled("notification.requested.avsc")
STATUS_SCHEMA, STATUS_SCHEMA_TEXT = _bundled("notification.status.avsc")


def frame(schema_id: int, schema, record: Dict) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack(">bI", MAGIC, schema_id))
    fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()


def unframe(data: bytes) -> Tuple[int, bytes]:
    if not data:
        raise ValueError("no payload")
    if data[0] != MAGIC:
        raise ValueError(f"magic byte is {data[0]}, not 0: not the Confluent wire format")
    if len(data) < 5:
        raise ValueError(f"{len(data)} bytes, shorter than the 5-byte header")
    (schema_id,) = struct.unpack(">I", data[1:5])
    return schema_id, data[5:]


def decode(data: bytes, reader_schema, writer_schema_for: Optional[Callable[[int], object]] = None) -> Dict:
    """Decodes a framed record. With `writer_schema_for` (a registry
    lookup), the writer's schema is resolved against `reader_schema`, so
    records from newer and older writers read; without, every record is
    read with `reader_schema`, as herald writes when it has no registry
    (schema id 0)."""
    schema_id, datum = unframe(data)
    writer = writer_schema_for(schema_id) if writer_schema_for else reader_schema
    return fastavro.schemaless_reader(io.BytesIO(datum), writer, reader_schema)
