"""Master and workers on different machines: the master puts 10 numbers in, workers square them.

On the server machine:      corral server --host 0.0.0.0
                            corral token create squares --role admin  (or use the admin token)
On each worker machine:     PYTHONPATH=/path/to/examples corral worker --server URL --token T
On the master:              python squares.py --server URL --token T

Workers import this file as the module `squares`, so it must be on their PYTHONPATH; the master
names the function by that import path. Unlike a BaseManager master/worker script, a wrong token
fails at once with a message, a lambda is refused at submit, and a worker killed mid-task just
means the task runs on another worker.
"""

from __future__ import annotations

import argparse
import sys

import corral

SQUARE = "squares:square"


def square(n: int) -> int:
    return n * n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="server URL [default: CORRAL_URL or a local server]")
    parser.add_argument("--token", help="API token [default: CORRAL_TOKEN]")
    parser.add_argument("--count", type=int, default=10, help="how many numbers to square")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for results")
    options = parser.parse_args(argv)
    try:
        with corral.connect(options.server, options.token) as client:
            jobs = [client.submit(SQUARE, n) for n in range(options.count)]
            for n, job in enumerate(jobs):
                print(f"{n} * {n} = {job.result(timeout=options.timeout)}", flush=True)
    except corral.CorralError as error:
        print(f"squares: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
