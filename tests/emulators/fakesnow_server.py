"""Start fakesnow in server mode (`fakesnow -s -p PORT`) for wsync's Snowflake tests.

One fix is applied first: fakesnow 0.12.1 builds the Arrow struct of a
TIMESTAMP_* result without a validity mask, so a NULL timestamp reaches every
client (Snowflake's own connector too) as 1970-01-01T00:00:00. Real Snowflake
sends NULL. The patch keeps fakesnow's encoding and adds the mask, so the
emulator answers as Snowflake does and no test has to accept the epoch.
"""

import sys

import pyarrow as pa

import fakesnow.arrow
from fakesnow.cli import main

_original = fakesnow.arrow.timestamp_to_sf_struct


def _timestamp_to_sf_struct_with_nulls(ts):
    if isinstance(ts, pa.ChunkedArray):
        ts = ts.combine_chunks()
    out = _original(ts)
    if ts.null_count == 0:
        return out
    fields = [out.type.field(i) for i in range(out.type.num_fields)]
    # The children are declared non-nullable: fill them, the struct carries the NULLs.
    children = [out.field(i).fill_null(0) for i in range(out.type.num_fields)]
    return pa.StructArray.from_arrays(children, fields=fields, mask=ts.is_null())


fakesnow.arrow.timestamp_to_sf_struct = _timestamp_to_sf_struct_with_nulls

if __name__ == "__main__":
    port = sys.argv[1] if len(sys.argv) > 1 else "18645"
    sys.exit(main(["-s", "-p", port]))
