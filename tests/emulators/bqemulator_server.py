"""Start bqemulator (`bqemulator start`) for wsync's BigQuery tests.

Offline, bqemulator 1.4.0 fails to start because it downloads DuckDB's spatial
extension at start-up; wsync's tests use no GEOGRAPHY, so loading it is
switched off first. REST on 127.0.0.1:PORT, gRPC on PORT+1 (unused by wsync).
"""

import sys

from bqemulator.storage.engine import DuckDBEngine

DuckDBEngine._load_spatial = lambda self: None  # noqa: SLF001

from bqemulator.cli import main  # noqa: E402

if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 18650
    sys.exit(
        main(
            [
                "start",
                "--rest-host", "127.0.0.1",
                "--rest-port", str(port),
                "--grpc-host", "127.0.0.1",
                "--grpc-port", str(port + 1),
                "--ephemeral",
                "--project", "wsync-test",
            ]
        )
    )
