"""Secrets out of everything the project writes or prints: URI passwords and credential variables."""

import logging
import os
import re
from pathlib import Path
from typing import TextIO

# Environment variables MLflow (and its artifact stores) read credentials from.
SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "DATABRICKS_TOKEN", "AWS_SECRET_ACCESS_KEY")


# A URL's user-info runs to the LAST `@` of its authority (which ends at the first /, ?, # or space), so a password
# holding `@` or `:` (`http://alice:p@ss:w0rd@host`, which servers accept) is masked whole; an empty user too.
_USERINFO_PASSWORD = re.compile(r"(//[^/?#\s:@]*):[^/?#\s]*@")


def redact(text: str) -> str:
    """`text` with the password of every `scheme://user:password@host` and the value of every secret
    environment variable (SECRET_ENV) masked: nothing the project writes or prints may hold one."""
    text = _USERINFO_PASSWORD.sub(r"\1:***@", text)
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


class RedactedStream:
    """A text stream (stdout, stderr) that masks secrets in whatever is written to it, Hydra's own lines included."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info:  # the traceback too: format it here, masked, in place of the exception
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def redact_log_handlers() -> None:
    """Mask secrets in every record the handlers configured so far write (Hydra's job and sweep logs)."""
    for name in ("", "hydra"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _RedactingFilter) for f in handler.filters):
                handler.addFilter(_RedactingFilter())


def redact_files(folder: Path, pattern: str = "*.yaml") -> None:
    """Mask secrets in files a tool wrote there (Hydra's record of a job's config and overrides)."""
    for path in folder.glob(pattern):
        text = path.read_text()
        if redact(text) != text:
            path.write_text(redact(text))
