"""Tap a streamed HTTP response: its bytes pass through an observer on their way to the SDK.

The tap shadows ``iter_bytes``/``aiter_bytes`` and ``close``/``aclose`` on the
one response instance (``read()``, ``iter_lines()`` and the SDK's ``Stream``
all read through ``iter_bytes``), and registers a finalizer for a body that is
never read. The closures hold the response itself: the cycle this makes is
freed by the garbage collector (as the SDK's own ``Stream`` cycle is), and a
weak reference would already be dead when httpx closes the body during that
collection.

An observer that leaves bytes out (the injected usage chunk) reads the body as
it arrives; a ``chunk_size`` the caller asked for is then applied to what it
hands on, so the caller still gets chunks of exactly that size. What it hands on
also loses the ``"usage": null`` members the injected option put in every other
chunk, so the caller's chunks are those it would get without the agent.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from typing import Any, Protocol

from .observers import SSEObserver, without_null_usage


class Tapped(Protocol):
    """What reads a tapped body: a metered call (``call.MeteredCall``), or a batch output
    file the app reads as a stream (``deferred.OutputReading``)."""

    observer: Any  # feed(bytes) -> bytes, flush() -> bytes (None before a call's response)
    reading: bool
    first_chunk_at: float | None

    def on_first_chunk(self) -> None: ...

    def finish_stream(self, outcome: str, exc: BaseException | None = None) -> None: ...


def _cuts_bytes_out(call: Tapped) -> bool:
    """Whether the observer may leave bytes out (so a chunk size is applied after it)."""
    return isinstance(call.observer, SSEObserver) and call.observer.hide_usage_chunk


def _rechunk_sync(source: Generator[bytes, None, None], size: int) -> Iterator[bytes]:
    """``source``'s bytes in ``size``-byte chunks (the last one shorter), as httpx yields them."""
    buffer = bytearray()
    try:
        for piece in source:
            buffer += piece
            if len(buffer) >= size:
                whole = len(buffer) - len(buffer) % size
                for start in range(0, whole, size):
                    yield bytes(buffer[start : start + size])
                del buffer[:whole]
        if buffer:
            yield bytes(buffer)
    finally:
        source.close()  # a caller closing early closes the observing generator now


async def _rechunk_async(source: AsyncGenerator[bytes, None], size: int) -> AsyncIterator[bytes]:
    buffer = bytearray()
    try:
        async for piece in source:
            buffer += piece
            if len(buffer) >= size:
                whole = len(buffer) - len(buffer) % size
                for start in range(0, whole, size):
                    yield bytes(buffer[start : start + size])
                del buffer[:whole]
        if buffer:
            yield bytes(buffer)
    finally:
        await source.aclose()


def _observe_sync(source: Iterator[bytes], call: Tapped) -> Generator[bytes, None, None]:
    observer = call.observer
    assert observer is not None
    restore = _cuts_bytes_out(call)  # the agent asked for the usage: it takes its traces out
    feed = observer.hand_on if restore else observer.feed  # hand_on strips "usage": null
    call.reading = True  # a close() from inside the read (httpx does that) is not the end
    try:
        for chunk in source:
            call.reading = False
            if call.first_chunk_at is None:
                call.on_first_chunk()
            out = feed(chunk)
            if out:
                yield out
            call.reading = True
        rest = observer.flush()
        if rest:
            yield without_null_usage(rest) if restore else rest
    except GeneratorExit:
        call.finish_stream("closed")
        raise
    except BaseException as exc:
        call.finish_stream("error", exc)
        raise
    finally:
        call.reading = False
    call.finish_stream("completed")


async def _observe_async(source: AsyncIterator[bytes], call: Tapped) -> AsyncGenerator[bytes, None]:
    observer = call.observer
    assert observer is not None
    restore = _cuts_bytes_out(call)  # the agent asked for the usage: it takes its traces out
    feed = observer.hand_on if restore else observer.feed  # hand_on strips "usage": null
    call.reading = True
    try:
        async for chunk in source:
            call.reading = False
            if call.first_chunk_at is None:
                call.on_first_chunk()
            out = feed(chunk)
            if out:
                yield out
            call.reading = True
        rest = observer.flush()
        if rest:
            yield without_null_usage(rest) if restore else rest
    except GeneratorExit:
        call.finish_stream("closed")
        raise
    except BaseException as exc:
        call.finish_stream("error", exc)
        raise
    finally:
        call.reading = False
    call.finish_stream("completed")


def tap_sync(response: Any, call: Tapped) -> None:
    cls = type(response)

    def iter_bytes(chunk_size: int | None = None) -> Iterator[bytes]:
        if chunk_size and _cuts_bytes_out(call):
            return _rechunk_sync(_observe_sync(cls.iter_bytes(response), call), chunk_size)
        return _observe_sync(cls.iter_bytes(response, chunk_size), call)

    def close() -> None:
        try:
            cls.close(response)
        finally:
            if not call.reading:
                call.finish_stream("closed")

    response.iter_bytes = iter_bytes
    response.close = close
    weakref.finalize(response, call.finish_stream, "abandoned")


def tap_async(response: Any, call: Tapped) -> None:
    cls = type(response)

    def aiter_bytes(chunk_size: int | None = None) -> AsyncIterator[bytes]:
        if chunk_size and _cuts_bytes_out(call):
            return _rechunk_async(_observe_async(cls.aiter_bytes(response), call), chunk_size)
        return _observe_async(cls.aiter_bytes(response, chunk_size), call)

    async def aclose() -> None:
        try:
            await cls.aclose(response)
        finally:
            if not call.reading:
                call.finish_stream("closed")

    response.aiter_bytes = aiter_bytes
    response.aclose = aclose
    weakref.finalize(response, call.finish_stream, "abandoned")
