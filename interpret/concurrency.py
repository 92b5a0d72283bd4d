"""What threads may share, and the locks that make sharing safe.

The service answers requests on a thread pool, and a worker runs one-sentence calls (prepare, predict,
saliency, attacks) on a second thread beside a long LiSSA repetition or scoring shard. Both share one
model and one tokenizer, and neither is safe to share as it is:

- **The model.** ``TrackedModel`` evaluates the tracked top as a function of ``theta`` with
  ``torch.func.functional_call``, which swaps the given tensors into the module for the duration of the
  call and swaps the originals back after. Two threads doing that at once restore each other's tensors
  (measured on MiniLM: a LiSSA loop beside a ``prepare`` loop gave a wrong ``v`` 56 times in 90 s and
  left the module holding a foreign tensor for good), and a plain forward during the swap reads the
  other thread's tensors. Every ``functional_call`` and every plain forward through tracked modules holds
  :func:`lock_of` the model; the backward passes and the frozen bottom (never swapped) run unlocked, so
  the two threads still overlap on most of the work.
- **The tokenizer.** A fast (Rust) tokenizer keeps padding and truncation as mutable state that each call
  resets to its own arguments. Two threads calling it at once either fail with "Already borrowed" or
  encode with the other call's settings: a padded batch encode beside one-sentence encodes raised "Unable
  to create tensor ... activate padding" within a few thousand calls, which the load benchmark saw as a
  500. ``serialized(tokenizer)`` wraps a tokenizer in a proxy that holds the tokenizer's lock around every
  call, method and property; ``TrackedModel``, ``TextClassifier`` and the service's limit checks wrap
  theirs. Tokenising is microseconds next to a forward pass.

Locks live in a weak table keyed by the shared object, not on its holders, so two holders of one model or
tokenizer share one lock, and proxies stay picklable and copyable like what they wrap.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import time
import typing
import weakref

if typing.TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def lock_of(shared: object) -> threading.RLock:
    """The one lock of a shared model or tokenizer (re-entrant: a locked method may call another)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(shared)
        if lock is None:
            lock = _LOCKS[shared] = threading.RLock()
        return lock


class SerializedTokenizer:
    """A tokenizer whose calls, methods and properties all run under its lock."""

    def __init__(self, tokenizer):
        self.wrapped = tokenizer

    def __call__(self, *args, **kwargs):
        with lock_of(self.wrapped):
            return self.wrapped(*args, **kwargs)

    def __getattr__(self, name: str):
        # Only reached for names the proxy itself lacks: everything of the tokenizer's. Dunder lookups
        # (copy, pickle) and ``wrapped`` before unpickling has set it must not be forwarded.
        if name == "wrapped" or name.startswith("__"):
            raise AttributeError(name)
        with lock_of(self.wrapped):
            attribute = getattr(self.wrapped, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def locked(*args, **kwargs):
            with lock_of(self.wrapped):
                return attribute(*args, **kwargs)

        return locked

    def __len__(self) -> int:
        with lock_of(self.wrapped):
            return len(self.wrapped)

    def __repr__(self) -> str:
        return f"SerializedTokenizer({self.wrapped!r})"


def serialized(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """``tokenizer`` made safe to share between threads (a proxy is returned as it is). Typed as the
    tokenizer it wraps: the proxy forwards every call, method and property to it."""
    if isinstance(tokenizer, SerializedTokenizer):
        return tokenizer
    return typing.cast("PreTrainedTokenizerBase", SerializedTokenizer(tokenizer))


HEAP_TRIM_INTERVAL_S = 30.0
_TRIM_LOCK = threading.Lock()
_TRIMMING = False


def trim_heap_periodically(interval_s: float = HEAP_TRIM_INTERVAL_S) -> bool:
    """Return freed heap pages to the OS every ``interval_s`` (glibc ``malloc_trim``), on a daemon thread.

    glibc keeps the pages of freed chunks resident inside its arenas, so a process that once ran a large
    request (an actor's trigger search or big scoring block, the API's audit job) keeps that peak for good
    and its resident memory creeps up under mixed traffic; ``malloc_trim(0)`` releases every free page, in
    milliseconds. One thread per process, however often it is called. ``False`` where the C library is not
    glibc (musl, macOS): nothing to do there.
    """
    global _TRIMMING
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    with _TRIM_LOCK:
        if _TRIMMING:  # one thread per process: every service and actor calls this
            return True
        _TRIMMING = True

    def loop() -> None:
        while True:
            time.sleep(interval_s)
            trim(0)

    threading.Thread(target=loop, name="heap-trim", daemon=True).start()
    return True
