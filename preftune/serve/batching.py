"""Requests of many clients batched into one ``generate`` call of the generation engine.

A worker thread takes the first waiting request, keeps collecting for ``wait_ms`` more (or until ``max_batch_size``
rows are waiting), and runs the collected requests as one :meth:`HFEngine.generate` call per set of identical
sampling parameters (one call takes one :class:`SamplingParams`). A request with a seed that samples runs in a call
of its own: its draws then do not depend on who else was waiting, so the same seed gives the same reply. The
engine decodes the rows of a call together, so n concurrent clients cost little more than one on a CPU bound by
memory bandwidth (every weight is read once per token for the whole batch).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from preftune.errors import PreftuneError
from preftune.generation.engine import GenerationOutput, SamplingParams


class QueueFull(PreftuneError):
    """More requests are waiting than the server accepts."""


@dataclass
class Generated:
    """One generated row of a request."""

    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]]
    text: str
    finished: bool  # ended at EOS or a stop string (False: ran out of max_new_tokens)


@dataclass
class _Request:
    prompts: list[list[int]]
    params: SamplingParams
    on_token: Callable[[int, int], None] | None  # (row of this request, token id), called from the worker thread
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple:
        if self.params.seed is not None and not self.params.greedy:
            return ("alone", id(self))
        return dataclasses.astuple(self.params)


class BatchingQueue:
    """Collects requests for ``wait_ms`` and runs them through ``engine`` in batches (see the module docstring).

    ``submit`` returns a future of the request's rows (:class:`Generated`, in the order of its prompts); at most
    ``max_pending`` rows wait at a time (then :class:`QueueFull`). ``batches`` remembers the last calls as
    (requests, rows) for inspection.
    """

    def __init__(self, engine, *, max_batch_size: int = 16, wait_ms: float = 5.0, max_pending: int = 256):
        self.engine = engine
        self.max_batch_size, self.wait_s, self.max_pending = int(max_batch_size), wait_ms / 1000.0, int(max_pending)
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._pending_rows = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.batches: deque[tuple[int, int]] = deque(maxlen=1000)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="preftune-batching", daemon=True)
            self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=60)
            self._thread = None

    def submit(self, prompts: list[list[int]], params: SamplingParams,
               on_token: Callable[[int, int], None] | None = None) -> Future:
        with self._lock:
            if self._pending_rows + len(prompts) > self.max_pending:
                raise QueueFull(f"the server is busy: {self._pending_rows} sequences are waiting (at most {self.max_pending}); "
                                "try again shortly")
            self._pending_rows += len(prompts)
        request = _Request([list(p) for p in prompts], params, on_token)
        self.start()
        self._queue.put(request)
        return request.future

    def _collect(self, first: _Request) -> list[_Request]:
        """``first`` and whatever else arrives within ``wait_s`` (up to ``max_batch_size`` rows)."""
        batch, rows = [first], len(first.prompts)
        deadline = time.monotonic() + self.wait_s
        while rows < self.max_batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # seen again by the loop after this batch
                break
            batch.append(item)
            rows += len(item.prompts)
        return batch

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            groups: dict[tuple, list[_Request]] = {}
            for request in self._collect(first):
                # a request whose client went away before its batch started (its future cancelled) is not run;
                # once running, a future can no longer be cancelled, so setting its result below cannot fail
                if not request.future.set_running_or_notify_cancel():
                    self._done(request)
                    continue
                groups.setdefault(request.key, []).append(request)
            for group in groups.values():
                self._generate(group)

    def _generate(self, group: list[_Request]) -> None:
        owners: list[tuple[_Request, int]] = [(r, row) for r in group for row in range(len(r.prompts))]
        prompts = [p for r in group for p in r.prompts]

        def on_tokens(indices: list[int], tokens: list[int]) -> None:
            for i, token in zip(indices, tokens):
                request, row = owners[i]
                if request.on_token is not None:
                    request.on_token(row, token)

        streaming = any(r.on_token is not None for r in group)
        try:
            out: GenerationOutput = self.engine.generate(prompts, group[0].params, on_tokens=on_tokens if streaming else None)
        except BaseException as err:  # noqa: BLE001 -- every waiting client gets the error, the worker lives on
            for request in group:
                self._done(request)
                request.future.set_exception(err)
            return
        self.batches.append((len(group), len(prompts)))
        start = 0
        for request in group:
            rows = range(start, start + len(request.prompts))
            start += len(request.prompts)
            self._done(request)
            request.future.set_result([
                Generated(out.sequences[i], out.logprobs[i], out.top_logprobs[i] if out.top_logprobs else [],
                          out.texts[i], out.finished[i]) for i in rows])

    def _done(self, request: _Request) -> None:
        with self._lock:
            self._pending_rows -= len(request.prompts)
