"""Tokens/s straight to a vLLM endpoint and through notelab.connect, side by side, in one run.

    python bench/serving.py [--worker NAME] [--concurrency 1 8 32] [--tokens 32] [--rounds 2]

Without --worker it starts a one-replica worker of the default model and stops it at the end.
With one replica, both paths hit the same server, so the ratio is what notelab's routing costs.
Runs alternate (direct, routed, direct, routed, ...) so that drift in the machine's speed hits both
alike; each figure is the median over rounds. Target: routed/direct >= 0.97 at every concurrency.
"""
import argparse
import asyncio
import statistics
import sys
import time

import openai
from rich.console import Console
from rich.table import Table

import notelab
from notelab.core import use_progress
from notelab.workers import get_worker, launch_worker, stop_worker


async def run(client, model: str, concurrency: int, requests: int, tokens: int) -> float:
    "Aggregate generated tokens/s for `requests` completions, `concurrency` in flight."
    sem = asyncio.Semaphore(concurrency)
    done = 0

    async def one(i):
        nonlocal done
        async with sem:
            r = await client.completions.create(model=model, prompt=f"Request {i}: tell a story.", max_tokens=tokens,
                                                temperature=0, extra_body={"ignore_eos": True})
            done += r.usage.completion_tokens

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    return done / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    use_progress("rich")
    name, started = a.worker, False
    if not name:
        name, started = "bench-serving", True
        notelab.pull_model()
        try:
            stop_worker(name)
        except notelab.NotelabError:
            pass
        launch_worker(name=name, replicas=1)
    try:
        r0 = get_worker(name).replicas[0]
        routed = notelab.connect(name)
        model = routed.model

        async def measure():
            # one event loop for the whole run: async clients keep connections bound to their loop
            direct = openai.AsyncOpenAI(base_url=r0.base_url, api_key=r0.api_key, timeout=600)
            await run(direct, model, 4, 4, 8)  # warm-up: first requests compile and allocate
            await run(routed.aio, model, 4, 4, 8)
            for c in a.concurrency:
                n = max(2 * c, 8)
                d, t = [], []
                for _ in range(a.rounds):
                    d.append(await run(direct, model, c, n, a.tokens))
                    t.append(await run(routed.aio, model, c, n, a.tokens))
                rows.append((c, n, statistics.median(d), statistics.median(t)))
                print(f"concurrency {c}: direct {rows[-1][2]:.1f} tok/s, notelab.connect {rows[-1][3]:.1f} tok/s",
                      file=sys.stderr)

        rows = []
        asyncio.run(measure())
    finally:
        if started:
            stop_worker(name)
    tab = Table(title=f"serving: {model}, {a.tokens} tokens per request, median of {a.rounds} rounds, "
                      "one replica")
    for col in ("concurrency", "requests", "direct tok/s", "notelab.connect tok/s", "ratio"):
        tab.add_column(col, justify="right")
    for c, n, d, t in rows:
        tab.add_row(str(c), str(n), f"{d:.1f}", f"{t:.1f}", f"{t / d:.3f}")
    Console(width=120).print(tab)


if __name__ == "__main__":
    main()
