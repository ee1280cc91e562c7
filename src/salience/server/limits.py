"""What the server accepts: body size, image type (by content), pixel count, the size of a scan,
signal or table, time per request, and how many requests (and how much memory) may wait for a
worker.

Nothing here needs FastAPI: :class:`BodySizeLimit` is a plain ASGI middleware.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from salience.errors import InvalidInputError, SalienceError

IMAGE_SIGNATURES: tuple[tuple[str, tuple[tuple[int, bytes], ...]], ...] = (
    ("PNG", ((0, b"\x89PNG\r\n\x1a\n"),)),
    ("JPEG", ((0, b"\xff\xd8\xff"),)),
    ("WEBP", ((0, b"RIFF"), (8, b"WEBP"))),
    ("BMP", ((0, b"BM"),)),
    ("GIF", ((0, b"GIF87a"),)),
    ("GIF", ((0, b"GIF89a"),)),
    ("TIFF", ((0, b"II*\x00"),)),
    ("TIFF", ((0, b"MM\x00*"),)),
)
"""Each accepted format's magic bytes: (offset, bytes) pairs that must all match."""
ALLOWED_IMAGE_TYPES = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
DECODED_BYTES_PER_PIXEL = 14
"""Estimated peak bytes per pixel of a photo while its request runs: Pillow's decoded image, the
RGB array the maps are drawn on and the copy shrunk for the page (``bench/server_queue.py``
measured 13.5 for a 36-megapixel PNG)."""
MIB = 1024 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestRejectedError(SalienceError, ValueError):
    """A request the server refuses; ``status`` is the HTTP status and ``kind`` a short code."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


@dataclass(frozen=True)
class Limits:
    """The server's limits on a request.

    Attributes
    ----------
    max_upload_bytes : int
        Largest request body; larger ones are refused before they are read.
    max_pixels : int
        Largest ``width * height`` of an uploaded image, checked from its header before decoding
        (a decompression bomb is refused without being decompressed).
    time_limit : float
        Seconds one explanation request may compute; it stops at the next model pass after that.
    max_pending : int
        Requests computing or waiting for a worker; more are refused as busy.
    max_pending_bytes : int
        Memory the images of those requests may take: each one's compressed upload plus an
        estimate of its decoded size from the header (:attr:`ImageUpload.memory`). A request
        that would pass it is refused as busy (503); an image over it on its own, as too large.
    max_top_k : int
        Largest ``top-K`` target.
    max_values : int
        Largest scan or signal (voxels or time steps, all channels), checked from the file's
        header before any value is read (a small ``.nii.gz`` may claim gigabytes).
    max_rows : int
        Most feature rows in one uploaded table (CSV rows of a tabular model).
    """

    max_upload_bytes: int = 20 * MIB
    max_pixels: int = 40_000_000
    time_limit: float = 120.0
    max_pending: int = 64
    max_pending_bytes: int = 2048 * MIB
    max_top_k: int = 5
    max_values: int = 8 * MIB
    max_rows: int = 1000

    def __post_init__(self) -> None:
        names = (
            "max_upload_bytes",
            "max_pixels",
            "max_pending",
            "max_pending_bytes",
            "max_top_k",
            "max_values",
            "max_rows",
        )
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
        if not self.time_limit > 0:
            raise InvalidInputError(
                f"time_limit must be a positive number of seconds, got {self.time_limit}"
            )


def sniff_image_type(data: bytes) -> str | None:
    """The accepted image format whose magic bytes start ``data``; None if none matches."""
    for name, signature in IMAGE_SIGNATURES:
        if all(data[offset : offset + len(magic)] == magic for offset, magic in signature):
            return name
    return None


@dataclass(frozen=True, eq=False)
class ImageUpload:
    """An uploaded image, still compressed, with what its header says.

    Attributes
    ----------
    data : bytes
        The file as uploaded; it is decoded only when a worker starts on the request.
    kind : str
        Its format, one of :data:`ALLOWED_IMAGE_TYPES`.
    width, height : int
        Its size in pixels, from the header.
    """

    data: bytes
    kind: str
    width: int
    height: int

    @property
    def memory(self) -> int:
        """Bytes the request holds for this image: the upload, and the photo once decoded."""
        return len(self.data) + self.width * self.height * DECODED_BYTES_PER_PIXEL


def check_image_upload(data: bytes, limits: Limits) -> ImageUpload:
    """Check an uploaded image's size and type by its content, without decoding its pixels.

    Raises
    ------
    RequestRejectedError
        413 for an upload over the size limit, or whose pixels (or their estimated memory) are
        over the limits, 400 for an empty one, 415 for content that is not one of the accepted
        image types (whatever its file name or declared type says).
    """
    if not data:
        raise RequestRejectedError(
            400, "empty_image", "the uploaded image is empty; send an image file"
        )
    if len(data) > limits.max_upload_bytes:
        raise RequestRejectedError(
            413,
            "too_large",
            f"the image is {len(data):,} bytes, over the limit of {limits.max_upload_bytes:,}; "
            "send a smaller file",
        )
    kind = sniff_image_type(data)
    if kind is None:
        raise RequestRejectedError(
            415,
            "not_an_image",
            f"the upload is not an image of an accepted type ({', '.join(ALLOWED_IMAGE_TYPES)}); "
            "send a PNG, JPEG, WebP, BMP, GIF or TIFF file",
        )
    width, height = _header_size(data, kind)
    if width * height > limits.max_pixels:
        raise RequestRejectedError(
            413,
            "too_many_pixels",
            f"the image is {width}×{height} = {width * height:,} pixels, over the limit of "
            f"{limits.max_pixels:,}; downscale it",
        )
    upload = ImageUpload(data, kind, width, height)
    if upload.memory > limits.max_pending_bytes:
        message = (
            f"the image is {width}×{height} pixels, about {upload.memory / MIB:,.0f} MiB once "
            f"decoded, over the server's memory for pending requests "
            f"({limits.max_pending_bytes / MIB:,.0f} MiB); downscale it"
        )
        raise RequestRejectedError(413, "too_many_pixels", message)
    return upload


def _header_size(data: bytes, kind: str) -> tuple[int, int]:
    """Width and height from the image's header, without decoding its pixels."""
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError

    not_readable = RequestRejectedError(
        415, "not_an_image", f"the upload starts like a {kind} file but is not a readable image"
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                found, size = image.format, image.size
    except Image.DecompressionBombError as error:  # far beyond any limit: refused unread
        raise RequestRejectedError(
            413, "too_many_pixels", f"the image has too many pixels ({error}); downscale it"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise not_readable from None
    if found is None or found.upper() != kind:
        raise not_readable
    return size


class PendingBudget:
    """The requests computing or waiting for a worker, bounded in number and in memory.

    Thread-safe: requests are admitted on the event loop and released from worker threads.

    Parameters
    ----------
    max_count : int
        Requests at once.
    max_bytes : int
        Sum of their :attr:`ImageUpload.memory`.
    """

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._count = 0
        self._bytes = 0

    def reserve(self, nbytes: int) -> None:
        """Admit one request holding ``nbytes``, or refuse it.

        Raises
        ------
        RequestRejectedError
            503 ``busy`` when the count or the memory would pass its bound.
        """
        with self._lock:
            if self._count >= self.max_count or self._bytes + nbytes > self.max_bytes:
                message = (
                    f"the server is busy with {self._count} requests holding "
                    f"{self._bytes / MIB:,.0f} MiB of images; try again in a moment"
                )
                raise RequestRejectedError(503, "busy", message)
            self._count += 1
            self._bytes += nbytes

    def release(self, nbytes: int) -> None:
        """A request admitted with ``nbytes`` is done."""
        with self._lock:
            self._count -= 1
            self._bytes -= nbytes

    @contextmanager
    def held(self, nbytes: int) -> Iterator[None]:
        """Admit a request for the duration of the block."""
        self.reserve(nbytes)
        try:
            yield
        finally:
            self.release(nbytes)

    def usage(self) -> tuple[int, int]:
        """``(requests, bytes)`` admitted now."""
        with self._lock:
            return self._count, self._bytes


def json_error(status: int, kind: str, message: str) -> tuple[dict[str, Any], bytes]:
    """The ASGI start message and body of a JSON error ``{"error", "kind", "status"}``."""
    body = json.dumps({"error": message, "kind": kind, "status": status}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, body


class BodySizeLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` with a 413 JSON error.

    A declared ``Content-Length`` over the limit is refused before anything is read; a body
    without one (chunked) is counted as it arrives and refused as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return (
            f"the request body is over the limit of {self.max_bytes:,} bytes; send a smaller image"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0 or size > self.max_bytes:
                if size < 0:  # uvicorn refuses these itself (salience.server.protocol)
                    invalid = "the Content-Length header is not a byte count; send a valid one"
                    start, body = json_error(400, "bad_http", invalid)
                else:
                    start, body = json_error(413, "too_large", self._message())
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
        received = 0
        started = responded = False

        async def counted_receive() -> Message:
            # Past the limit: answer 413 now, and tell the app the client went away.
            nonlocal received, responded
            if responded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not started:
                    responded = True
                    start, body = json_error(413, "too_large", self._message())
                    await send(start)
                    await send({"type": "http.response.body", "body": body})
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if responded:  # after our 413 the app's own answer is dropped
                return
            started = True
            await send(message)

        await self.app(scope, counted_receive, guarded_send)
