"""The demo: shell and Python jobs on a running corral cluster, their results and history.

Run it against any server: CORRAL_URL and CORRAL_TOKEN tell it where (scripts/demo sets them).
"""

from __future__ import annotations

import corral
from tasks import slow_square, square, where


def main() -> None:
    with corral.connect() as client:
        print(f"connected to {client.url}; workers: {len(client.workers())}")

        shell = client.submit_shell("echo hello from $(hostname); uname -sr", name="hello")
        print(f"shell job {shell.id}: exit code {shell.result(timeout=60)}")
        print("  its output:", client.logs(shell.id).decode().strip().replace("\n", " | "))

        print("python job where():", client.submit(where).result(timeout=60))

        jobs = client.submit_many(corral.python_job(square, n) for n in range(10))
        print("squares 0..9:", [job.result(timeout=60) for job in jobs])

        slow = [client.submit(slow_square, n, 0.3 - n * 0.05) for n in range(5)]
        order = [job.result() for job in client.as_completed(slow, timeout=60)]
        print("slow squares, in the order they finished:", order)

        failing = client.submit_shell("echo about to fail >&2; exit 3", retries=1)
        try:
            failing.result(timeout=60)
        except corral.JobFailed as failure:
            attempts = len(failing.info().attempts)
            print(f"failing job: {failure.state} after {attempts} attempts (exit code 3)")

        print("\nlast jobs:")
        for info in client.jobs(limit=8):
            took = f"{info.finished - info.started:.3f}s" if info.finished and info.started else "-"
            print(f"  {info.id}  {info.state.value:<10} {took:>8}  {info.name}")


if __name__ == "__main__":
    main()
