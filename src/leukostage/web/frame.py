"""What every HTML page is given, whichever blueprint renders it: the disclaimer (its lead sentence in bold), the
file types the upload fields accept, and the configuration the page scripts read (classes, limits, Grad-CAM)."""

from __future__ import annotations

from flask import Flask, current_app
from flask_login import current_user

from ..classes import (
    CLASSES,
    DISCLAIMER,
    EYEPIECE_MODE,
    EYEPIECE_NOTE,
    NOT_EVIDENCE_LABEL,
    RESCALED_NOTE,
    UNCERTAIN_COLOUR,
    UNCERTAIN_DISPLAY_NAME,
    UNCERTAIN_KEY,
    text_colour,
)
from ..explain import colour_scale_info
from ..imaging import size_limit_message
from ..outcomes import UNCERTAIN_REASON_NAMES, UNCERTAIN_REASON_TEXT
from .context import can_explain, predictor

ACCEPT = "image/jpeg,image/png,image/tiff,image/bmp,.jpg,.jpeg,.png,.tif,.tiff,.bmp"


def disclaimer_parts() -> tuple[str, str]:
    """The disclaimer as (lead sentence, rest): "Research decision support, not a diagnosis." goes in bold."""
    lead, _, rest = DISCLAIMER.partition(". ")
    return lead + ".", rest


def chrome() -> dict:
    """What the frame of every signed-in page shows (``cases/base.html``): who is signed in, the disclaimer, the
    model."""
    lead, rest = disclaimer_parts()
    return {"user": current_user, "disclaimer_lead": lead, "disclaimer_rest": rest, "model": predictor().info}


def init_app(app: Flask) -> None:
    """The disclaimer for every template, also those rendered outside a blueprint's views (the login page)."""
    app.jinja_env.globals.setdefault("disclaimer_parts", disclaimer_parts())


def page_config() -> dict:
    """What the script needs: class names and badge colours (from classes.py, the one source), limits, whether
    the model can explain its predictions (Grad-CAM outputs in its graph), how heat maps are coloured (for the
    colour scale drawn beside them), and the words for a result without a class and for how a picture was taken
    (classes.py, so the script and the server say the same)."""
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
        "explain": can_explain(),
        "colour_scale": colour_scale_info(),
        "wording": {
            "uncertain_names": UNCERTAIN_REASON_NAMES,
            "uncertain_text": UNCERTAIN_REASON_TEXT,
            "not_evidence": NOT_EVIDENCE_LABEL,
            "eyepiece_mode": EYEPIECE_MODE,
            "eyepiece_note": EYEPIECE_NOTE,
            "rescaled_note": RESCALED_NOTE,
        },
    }
