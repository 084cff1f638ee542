"""The files of a request, as the prediction API and the case API both take them: read into memory (see
``InMemoryRequest``), held to the per-file limit, and analysed by the one pipeline, ``predict.analyse_bytes``."""

from __future__ import annotations

from flask import current_app, request
from werkzeug.datastructures import FileStorage

from ..imaging import size_limit_message
from ..predict import Analysis, analyse_bytes
from .context import predictor

MAX_NAME_CHARS = 255  # the client's file name is echoed back (never used as a path); keep it short
EMPTY_REASON = "The file is empty; choose an image file (JPEG, PNG, TIFF or BMP)."


class Upload:
    """One uploaded file part, read into memory: the client's name and the bytes."""

    def __init__(self, part: FileStorage):
        self.named = bool(part.filename)
        self.name = (part.filename or "upload")[:MAX_NAME_CHARS]  # echoed back, never used as a path
        self.data = part.read()

    def refusal(self) -> tuple[int, str, str] | None:
        """Why this file is not analysed at all, as (HTTP status, code, message): empty, or over the per-file limit
        ``MAX_FILE_BYTES``; None when it goes through the pipeline."""
        if not self.data:
            return 400, "empty_file", EMPTY_REASON
        limit = current_app.config["MAX_FILE_BYTES"]
        if len(self.data) > limit:
            return 413, "file_too_large", size_limit_message(len(self.data), limit, "file")
        return None

    def analyse(self, explain: bool = False) -> Analysis:
        """The shared pipeline on these bytes (keeping Grad-CAM's outputs when it will explain)."""
        return analyse_bytes(self.data, self.name, predictor(), current_app.config["VALIDATION_PRESET"], explain)


def uploads(field: str) -> list[Upload]:
    """The file parts of ``field``, without the nameless empty part browsers send when no file was chosen."""
    parts = [Upload(part) for part in request.files.getlist(field)]
    return [u for u in parts if u.data or u.named]
