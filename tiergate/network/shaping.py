"""Optional egress rate limit: a tbf root qdisc on every non-loopback interface inside the netns.

Imported lazily, only when a policy has a `rate` (pyroute2 costs ~200 ms to import).
"""

from __future__ import annotations

import re

from tiergate.network.apply import NetworkApplyError, check_not_host, netns_path

_RATE_RE = re.compile(r"^([1-9][0-9]{0,9})(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|tbps)$")
_MULT = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12,
         "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9, "tbps": 8 * 10**12}


def rate_bits(rate: str) -> int:
    """'10mbit' -> 10_000_000 (tc units: kbit = 1000 bit/s, kbps = 1000 bytes/s)."""
    m = _RATE_RE.match(rate) if isinstance(rate, str) else None
    if not m:
        raise ValueError(f"rate: must be like \"10mbit\" or \"500kbit\", got {rate!r}")
    return int(m.group(1)) * _MULT[m.group(2)]


def shape(netns_path_: str | int, rate: str, latency_ms: int = 50) -> list[str]:
    """Replace the root qdisc of every non-lo link in the namespace with tbf at `rate`.

    Returns the interface names shaped. Raises NetworkApplyError (one line).
    """
    bits = rate_bits(rate)
    path = netns_path(netns_path_)
    check_not_host(path)
    from pyroute2 import IPRoute  # lazy: only policies with a rate pay for it

    byte_rate = max(bits // 8, 1)
    # burst: at least one MTU-ish packet plus what 10 ms at the rate carries (tc's usual rule of thumb).
    burst = max(byte_rate // 100, 16 * 1024)
    shaped = []
    try:
        # flags=0: never create a namespace at that path (pyroute2's default is O_CREAT).
        with IPRoute(netns=path, flags=0) as ipr:
            for link in ipr.get_links():
                name = link.get_attr("IFLA_IFNAME")
                if name == "lo":
                    continue
                ipr.tc("replace", kind="tbf", index=link["index"], handle="1:",
                       rate=f"{bits}bit", burst=burst, latency=f"{latency_ms}ms")
                shaped.append(name)
    except NetworkApplyError:
        raise
    except Exception as exc:  # pyroute2 raises NetlinkError, OSError, TimeoutError...
        raise NetworkApplyError(f"rate limit {rate} in {path} failed: {exc}".splitlines()[0]) from None
    return shaped


__all__ = ["shape", "rate_bits"]
