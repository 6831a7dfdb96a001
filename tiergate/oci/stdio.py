"""JSON over stdin/stdout for hook stages; hot path, standard library only.

Stdout carries data only (podman's precreate reads it back as the whole
spec); anything else belongs in the log.
"""

from __future__ import annotations

import sys

from tiergate.oci import jsonio
from tiergate.oci.errors import OciError


def read_stdin(what: str = "state") -> dict:
    """Read one JSON object from stdin, at most MAX_BYTES (+1 to detect excess)."""
    stream = sys.stdin
    if stream is None:
        raise OciError(f"no stdin to read the {what} from")
    try:
        data = stream.buffer.read(jsonio.MAX_BYTES + 1)
    except OSError as e:
        raise OciError(f"cannot read the {what} from stdin: {(e.strerror or str(e)).lower()}") from None
    return jsonio.loads(data, what)


def write_stdout(obj: object) -> None:
    """Write ``obj`` as compact JSON to stdout and flush, nothing else."""
    out = sys.stdout.buffer
    out.write(jsonio.dumps(obj))
    out.flush()
