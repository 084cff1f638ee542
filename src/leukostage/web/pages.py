"""The browser page: one HTML template, its script and style sheet, all served by this app (works offline)."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

from ..classes import NOT_EVIDENCE_LABEL
from ..imaging import SUPPORTED_FORMATS, mebibytes
from .context import predictor
from .frame import ACCEPT, disclaimer_parts, page_config

bp = Blueprint("pages", __name__)


@bp.get("/")
def index():
    lead, rest = disclaimer_parts()
    return render_template(
        "index.html",
        page_config=page_config(),
        disclaimer_lead=lead,
        disclaimer_rest=rest,
        accept=ACCEPT,
        formats=", ".join(f.upper() for f in SUPPORTED_FORMATS),
        max_size=mebibytes(current_app.config["MAX_FILE_BYTES"]),
        model=predictor().info,
        not_evidence=NOT_EVIDENCE_LABEL,
    )
