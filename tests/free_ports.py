"""Free loopback ports for a `dynamo dev` cluster started by a check script.

Ports are drawn below the kernel's ephemeral range (`ip_local_port_range`): a port found
free there can be taken by nothing but a deliberate bind, whereas a free port inside the
range can be handed to any outgoing connection (the cluster's own, to the ring service)
between the check and the service's bind, which made a storage node fail to start with
"address already in use".

As a script: `free_ports.py SINGLES RUN [RUN ...]` prints SINGLES separate ports, then
the first port of each run of RUN consecutive ones (ring replica i and storage node i
listen on their base + i).
"""

from __future__ import annotations

import random
import socket
import sys

LOWEST = 10_000


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port_run(count: int, taken: set[int] | None = None) -> int:
    """Returns the first of `count` consecutive bindable ports below the ephemeral range,
    none of them in `taken`."""
    taken = taken or set()
    high = _ephemeral_low() - count
    if high <= LOWEST:
        raise RuntimeError("no room below the ephemeral port range")
    rng = random.Random()
    for _ in range(1000):
        base = rng.randrange(LOWEST, high)
        ports = range(base, base + count)
        if not taken.intersection(ports) and all(_bindable(p) for p in ports):
            return base
    raise RuntimeError(f"no {count} consecutive free ports below the ephemeral range")


def free_port(taken: set[int] | None = None) -> int:
    """Returns one bindable port below the ephemeral range, not in `taken`."""
    return free_port_run(1, taken)


def main() -> None:
    singles, runs = int(sys.argv[1]), [int(a) for a in sys.argv[2:]]
    taken: set[int] = set()
    out = []
    for _ in range(singles):
        p = free_port(taken)
        taken.add(p)
        out.append(p)
    for run in runs:
        base = free_port_run(run, taken)
        taken.update(range(base, base + run))
        out.append(base)
    print(" ".join(str(p) for p in out))


if __name__ == "__main__":
    main()
