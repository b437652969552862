"""A resumable HTTP(S) download of one large file: a cut connection carries on from the last byte written."""

import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from http import HTTPStatus
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from src.core.errors import DataError

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes read and written at a time: memory stays flat whatever the file's size
BACKOFF_FIRST = 0.5  # seconds before a retry; doubles with each further attempt that made no progress
BACKOFF_MAX = 5.0  # seconds: the longest wait between two attempts
# "bytes 100-199/200" (a 206) or "bytes */200" (a 416); a total of "*" means unknown
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")
# a refused, cut or timed-out connection, or a short read (URLError and socket.timeout are OSErrors)
_NETWORK_ERRORS = (http.client.HTTPException, OSError)


def _one_line(exc: BaseException) -> str:
    """An exception's message as one line (URLError's wrapped socket error, if any)."""
    reason = getattr(exc, "reason", None) or exc
    return " ".join(str(reason).split()) or type(reason).__name__


def _http_error(url: str, exc: urllib.error.HTTPError) -> DataError:
    """The DataError for an HTTP error status, with its reason phrase."""
    exc.close()  # an HTTP error response holds the connection open until closed
    phrase = " ".join(str(exc.reason or "").split()) or f"HTTP {exc.code}"
    return DataError(f"data.url: cannot download {url} ({phrase})")


def _content_range(headers) -> tuple[Optional[int], Optional[int]]:
    """(first byte, total length) of a Content-Range header; None where absent or unknown."""
    match = _CONTENT_RANGE.fullmatch((headers.get("Content-Range") or "").strip())
    if match is None:
        return None, None
    start, total = match.groups()
    return (None if start is None else int(start)), (None if total == "*" else int(total))


def remote_identity(url: str, timeout: float) -> dict:
    """What identifies the remote file now: {"url", "length", "etag", "last_modified"} from a HEAD request (None where the server sends no such header)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as response:
            headers = response.headers
    except urllib.error.HTTPError as exc:
        raise _http_error(url, exc) from None
    except (*_NETWORK_ERRORS, ValueError) as exc:  # ValueError: not a URL urllib can open
        raise DataError(f"data.url: cannot reach {url} ({_one_line(exc)})") from None
    length = headers.get("Content-Length", "").strip()
    return {
        "url": url,
        "length": int(length) if length.isdigit() else None,
        "etag": headers.get("ETag"),
        "last_modified": headers.get("Last-Modified"),
    }


class _Download:
    """The .part file being filled, and what the server said about the whole file."""

    def __init__(self, url: str, part: Path, timeout: float, bar: tqdm):
        self.url, self.part, self.timeout, self.bar = url, part, timeout, bar
        self.have = part.stat().st_size if part.exists() else 0  # an interrupted earlier process's bytes
        self.received = 0  # bytes received by this process, to tell an attempt that made progress
        self.total: Optional[int] = None  # Content-Length of a 200, or the total of a 206's Content-Range
        self.validator: Optional[str] = None  # ETag or Last-Modified of the bytes in .part, for If-Range

    def _start_over(self, why: str) -> None:
        log.warning("download of %s: %s; starting over from byte 0", self.url, why)
        self.have = 0
        self.bar.reset(total=self.total)

    def attempt(self) -> Optional[str]:
        """One request, appending what arrives to the .part; None once it holds the whole file, else why not."""
        if self.have:  # the file on disk is the truth: a failed write may have left part of a chunk
            self.have = self.part.stat().st_size if self.part.exists() else 0
        request = urllib.request.Request(self.url)
        if self.have:
            request.add_header("Range", f"bytes={self.have}-")
            if self.validator:  # the server sends the whole (new) file if it changed since
                request.add_header("If-Range", self.validator)
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code != HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE or not self.have:
                raise _http_error(self.url, exc) from None
            exc.close()
            _, size = _content_range(exc.headers)
            if size == self.have:
                return None  # the .part already held the whole file
            self._start_over(f"the server has no byte {self.have} (its file has {size} bytes)")
            return "range not satisfiable"
        with response:
            validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
            if response.status == HTTPStatus.PARTIAL_CONTENT:
                start, size = _content_range(response.headers)
                if start != self.have or (self.total is not None and size != self.total):
                    self._start_over(f"asked for byte {self.have}, got a range from byte {start} of {size}")
                    return "wrong range"
                self.total = size
                self.validator = self.validator or validator
            else:  # the server ignored Range, or If-Range failed because the file changed
                length = response.headers.get("Content-Length", "").strip()
                self.total = int(length) if length.isdigit() else None
                self.validator = validator
                if self.have:
                    self._start_over("the server sent the whole file")
                self.bar.reset(total=self.total)
            with open(self.part, "ab" if self.have else "wb") as out:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    self.have += len(chunk)
                    self.received += len(chunk)
                    self.bar.update(len(chunk))
        if self.total is None:
            return None  # no length announced: the end of the body is the end of the file
        if self.have > self.total:
            self.part.unlink()
            raise DataError(f"data.url: download of {self.url} got {self.have} bytes, more than the {self.total} announced")
        return None if self.have == self.total else f"the connection closed at byte {self.have} of {self.total}"


def download_file(url: str, dest: Path, timeout: float, *, progress: bool = True, max_stalls: int = 5) -> Path:
    """Download `url` to `dest`, resuming after a cut connection with HTTP Range; returns dest."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    resumed = part.stat().st_size if part.exists() else 0
    bar = tqdm(initial=resumed, unit="B", unit_scale=True, unit_divisor=1024, desc="download", file=sys.stderr,
               disable=not progress)
    with bar:
        job = _Download(url, part, timeout, bar)
        if job.have:
            log.info("download of %s resumes at byte %d of %s", url, job.have, part)
        attempts = stalls = 0
        furthest = job.have  # the most of the file held at once: restarts that never get past it make no progress
        while True:
            attempts += 1
            try:
                reason = job.attempt()
            except _NETWORK_ERRORS as exc:
                reason = _one_line(exc)
            if reason is None:
                break
            # net progress only: a server without Range support that cuts the body at the same place again and
            # again receives bytes on every attempt, and would otherwise start over for ever
            stalls = 0 if job.have > furthest else stalls + 1
            furthest = max(furthest, job.have)
            if stalls >= max_stalls:
                kept = f"; the partial file {part} resumes next time" if part.exists() else ""
                raise DataError(f"data.url: download of {url} failed after {attempts} attempts ({reason}){kept}")
            log.warning("download of %s interrupted (%s); resuming at byte %d", url, reason, job.have)
            time.sleep(min(BACKOFF_FIRST * 2**stalls, BACKOFF_MAX))
    os.replace(part, dest)
    return dest
