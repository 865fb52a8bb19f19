"""Waiting for a server a test started: until it answers, or its process ends.

A start takes what the machine gives it (MLflow's first start migrates its database; a lab imports for seconds;
on a busy 2-core machine both take several times longer), so the wait has no speed limit. It ends when the
server answers, or fails at once when the process exits, with the end of its log. `most` only bounds a hang.
"""
import time
from pathlib import Path

import httpx


def answers(url: str, **kw) -> bool:
    "True when a GET of `url` returns 200."
    try:
        return httpx.get(url, timeout=5, **kw).status_code == 200
    except httpx.HTTPError:
        return False


def until_serving(proc, probe, what: str, log: Path | None = None, most: float = 900) -> None:
    "Wait until `probe()` is true; fail when `proc` exits first (or after `most` seconds: hung), naming `what`."
    t0 = time.monotonic()
    while not probe():
        if proc.poll() is not None or time.monotonic() - t0 > most:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else "(no log)"
            state = f"exited with code {proc.returncode}" if proc.poll() is not None else f"hung for {most:.0f} s"
            raise AssertionError(f"{what} {state} before it answered:\n{tail}")
        time.sleep(0.3)
