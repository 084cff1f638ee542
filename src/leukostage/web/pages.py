"""The browser page: one HTML template, its script and style sheet, all served by this app (works offline)."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

from ..classes import CLASSES, DISCLAIMER, UNCERTAIN_COLOUR, UNCERTAIN_DISPLAY_NAME, UNCERTAIN_KEY, text_colour
from ..classes import luminance as _luminance  # noqa: F401  (tests read it here)
from ..explain import colour_scale_info
from ..imaging import SUPPORTED_FORMATS, mebibytes, size_limit_message
from . import PREDICTOR_KEY
from .api import can_explain

bp = Blueprint("pages", __name__)

ACCEPT = "image/jpeg,image/png,image/tiff,image/bmp,.jpg,.jpeg,.png,.tif,.tiff,.bmp"


def page_config() -> dict:
    """What the script needs: class names and badge colours (from classes.py, the one source), limits, whether
    the model can explain its predictions (Grad-CAM outputs in its graph), and how heat maps are coloured (for the
    colour scale drawn beside them)."""
    badges = [
        {
            "key": c.key,
            "display_name": c.display_name,
            "dataset_label": c.dataset_label,
            "colour": c.colour,
            "text_colour": text_colour(c.colour),
        }
        for c in CLASSES
    ]
    badges.append(
        {
            "key": UNCERTAIN_KEY,
            "display_name": UNCERTAIN_DISPLAY_NAME,
            "dataset_label": None,
            "colour": UNCERTAIN_COLOUR,
            "text_colour": text_colour(UNCERTAIN_COLOUR),
        }
    )
    limit = current_app.config["MAX_FILE_BYTES"]
    return {
        "classes": badges,
        "max_bytes": limit,
        "too_large_message": size_limit_message(None, limit, "file"),
        "explain": can_explain(current_app.extensions[PREDICTOR_KEY]),
        "colour_scale": colour_scale_info(),
    }


@bp.get("/")
def index():
    lead, _, rest = DISCLAIMER.partition(". ")  # "Research decision support, not a diagnosis" goes in bold
    return render_template(
        "index.html",
        page_config=page_config(),
        disclaimer_lead=lead + ".",
        disclaimer_rest=rest,
        accept=ACCEPT,
        formats=", ".join(f.upper() for f in SUPPORTED_FORMATS),
        max_size=mebibytes(current_app.config["MAX_FILE_BYTES"]),
        model=current_app.extensions[PREDICTOR_KEY].info,
    )
