"""The files of a request, as the prediction API and the case API both take them: read into memory (see
``InMemoryRequest``), held to the per-file limit, and analysed by the one pipeline, ``predict.analyse_bytes``; and
what one request may spend (:class:`Work`), which every route gets (``create_app`` starts the clock)."""

from __future__ import annotations

import time

from flask import current_app, g, request
from werkzeug.datastructures import FileStorage

from ..imaging import size_limit_message
from ..predict import Analysis, analyse_bytes
from . import metrics
from .context import predictor
from .responses import NOT_A_SMEAR_STATUS, STATUS_BY_CODE, ApiError

MAX_NAME_CHARS = 255  # the client's file name is echoed back (never used as a path); keep it short
EMPTY_REASON = "The file is empty; choose an image file (JPEG, PNG, TIFF or BMP)."
# Files that are not an image this app can read and keep: empty, over the per-file limit, not an image, or more
# pixels than imaging.MAX_PIXELS. A case stores none of them (their entry says why); a readable image that is not a
# usable smear is stored, as a refused field.
NOT_AN_IMAGE_CODES = frozenset(
    {"empty_file", "file_too_large"} | {code for code, status in STATUS_BY_CODE.items() if status != NOT_A_SMEAR_STATUS}
)


class Work:
    """What one request may still spend: server time (``REQUEST_BUDGET_S``) and heat-map pixels
    (``MAX_EXPLAINED_PIXELS``). Checked between steps, so a request answers a JSON 503 before gunicorn's worker
    timeout (:func:`leukostage.web.server.worker_timeout_s`, well above the budget) would kill it."""

    def __init__(self, budget_s: float, pixels: int):
        self.budget_s = budget_s
        self.deadline = time.monotonic() + budget_s
        self.pixels_left = pixels

    def spent(self) -> bool:
        """Whether the time budget is used up."""
        return time.monotonic() > self.deadline

    def over_time_message(self) -> str:
        return (
            f"The request needed more than {self.budget_s:g} s of server time and was stopped; send "
            "fewer or smaller images per request, or ask without explain."
        )

    def check_time(self) -> None:
        """Raises: ApiError 503 ``over_time_budget`` once the budget is spent."""
        if self.spent():
            raise ApiError(503, "over_time_budget", self.over_time_message())

    def take_pixels(self, height: int, width: int) -> bool:
        """Reserve one overlay's pixels (at its capped size); False, reserving nothing, when they do not fit."""
        pixels = height * width
        if pixels > self.pixels_left:
            return False
        self.pixels_left -= pixels
        return True


def start_the_clock() -> None:
    """``before_request``: this request's budget, as ``g.work``."""
    g.work = Work(float(current_app.config["REQUEST_BUDGET_S"]), int(current_app.config["MAX_EXPLAINED_PIXELS"]))


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

    def refused_entry(self) -> dict | None:
        """The list entry of a file refused before analysis (:meth:`refusal`), counted as a result; else None."""
        refused = self.refusal()
        if refused is None:
            return None
        return self.entry(*refused[1:])

    def entry(self, code: str, reason: str) -> dict:
        """An entry for this file that was not analysed (``valid`` false, with ``code`` and ``reason``), counted."""
        result = {"file": self.name, "valid": False, "code": code, "reason": reason}
        metrics.count_result(result)
        return result

    def analyse(self, explain: bool = False) -> Analysis:
        """The shared pipeline on these bytes (keeping Grad-CAM's outputs when it will explain); the result is
        counted for ``/metrics``."""
        analysis = analyse_bytes(self.data, self.name, predictor(), current_app.config["VALIDATION_PRESET"], explain)
        metrics.count_result(analysis.result)
        return analysis


def uploads(field: str) -> list[Upload]:
    """The file parts of ``field``, without the nameless empty part browsers send when no file was chosen."""
    parts = [Upload(part) for part in request.files.getlist(field)]
    return [u for u in parts if u.data or u.named]
