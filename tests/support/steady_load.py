"""Requests at a steady rate in the background, each in a thread of its own (an open loop: a slow fleet does
not slow the arrivals), while a test does something to the fleet; a subclass sends one request in `_one`."""
from __future__ import annotations

import threading
import time


class SteadyLoad:
    """`with Load(...) as load:` starts the arrivals, lets them flow `lead_s` before the body runs and `tail_s`
    after it, then waits for every request sent. `results` is what `_one` appended, under `lock`; a request
    whose `_one` raised what it did not expect is in `crashed` instead, so no request goes uncounted."""

    def __init__(self, rate_per_s: float, lead_s: float, tail_s: float):
        self.interval, self.lead_s, self.tail_s = 1.0 / rate_per_s, lead_s, tail_s
        self.results: list = []
        self.crashed: list[str] = []
        self.sent = 0
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _one(self, i: int) -> None:
        raise NotImplementedError

    def _send(self, i: int) -> None:
        try:
            self._one(i)
        except Exception as exc:  # noqa: BLE001 (a request failed in a way _one did not foresee: still counted)
            with self.lock:
                self.crashed.append(f"{type(exc).__name__}: {exc}")

    def _run(self) -> None:
        workers, start, i = [], time.monotonic(), 0
        while not self.stop.is_set():
            if time.monotonic() - start >= i * self.interval:
                worker = threading.Thread(target=self._send, args=(i,), daemon=True)
                worker.start()
                workers.append(worker)
                i += 1
            time.sleep(0.02)
        self.sent = i
        for worker in workers:
            worker.join(timeout=150)

    def __enter__(self):
        self.thread.start()
        time.sleep(self.lead_s)
        return self

    def __exit__(self, *exc):
        time.sleep(self.tail_s)
        self.stop.set()
        self.thread.join(timeout=200)
        # every request sent came back one way or the other (a worker still running at the end would hide one);
        # not checked when the body raised: its error is the one to see
        if exc[0] is None:
            assert len(self.results) + len(self.crashed) == self.sent, (len(self.results), len(self.crashed), self.sent)
