"""Tokenizers that several threads can share: every call into one tokenizer holds that tokenizer's lock.

A fast (Rust) tokenizer keeps padding and truncation as mutable state that each call resets to its own
arguments. Two threads calling one tokenizer at once (the service's request threads; a worker's LiSSA
thread beside its saliency thread) then either fail with "Already borrowed" or, worse, encode with the
other call's settings: a padded batch encode running beside one-sentence encodes raised "Unable to create
tensor ... activate padding" within a few thousand calls, which the load benchmark saw as a 500.
Tokenising is microseconds next to a forward pass, so one lock per tokenizer costs nothing measurable.

``serialized(tokenizer)`` wraps a tokenizer in a proxy that takes the lock around every call, attribute
read and property; ``TrackedModel`` and ``TextClassifier`` wrap theirs, so two holders of the same
tokenizer share one lock. The lock lives in a weak table keyed by the tokenizer itself, not on the proxy,
so proxies stay picklable and copyable like the tokenizer they wrap.
"""

from __future__ import annotations

import functools
import threading
import weakref

_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def tokenizer_lock(tokenizer) -> threading.RLock:
    """The one lock of ``tokenizer`` (re-entrant: a locked method may call another)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(tokenizer)
        if lock is None:
            lock = _LOCKS[tokenizer] = threading.RLock()
        return lock


class SerializedTokenizer:
    """A tokenizer whose calls, methods and properties all run under its lock."""

    def __init__(self, tokenizer):
        self.wrapped = tokenizer

    def __call__(self, *args, **kwargs):
        with tokenizer_lock(self.wrapped):
            return self.wrapped(*args, **kwargs)

    def __getattr__(self, name: str):
        # Only reached for names the proxy itself lacks: everything of the tokenizer's. Dunder lookups
        # (copy, pickle) and ``wrapped`` before unpickling has set it must not be forwarded.
        if name == "wrapped" or name.startswith("__"):
            raise AttributeError(name)
        with tokenizer_lock(self.wrapped):
            attribute = getattr(self.wrapped, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def locked(*args, **kwargs):
            with tokenizer_lock(self.wrapped):
                return attribute(*args, **kwargs)

        return locked

    def __len__(self) -> int:
        with tokenizer_lock(self.wrapped):
            return len(self.wrapped)

    def __repr__(self) -> str:
        return f"SerializedTokenizer({self.wrapped!r})"


def serialized(tokenizer) -> SerializedTokenizer:
    """``tokenizer`` made safe to share between threads (a proxy is returned as it is)."""
    return tokenizer if isinstance(tokenizer, SerializedTokenizer) else SerializedTokenizer(tokenizer)
