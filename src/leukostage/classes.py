"""The four classes: one source of truth for keys, names, dataset labels, colours and which are leukaemias.

The stage names are the seed paper's; the dataset labels are the Taleqani dataset's B-ALL subtypes (determined by
flow cytometry). They are not clinical stages, and every surface that shows a result says so.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClassInfo:
    key: str
    display_name: str
    dataset_label: str
    folder: str  # relative to the dataset root (Table 2 layout)
    colour: str  # badge colour on the web page
    is_leukaemia: bool  # calling a leukaemia Normal is the costly error: rules and metrics single it out


CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo("normal", "Normal", "Benign (hematogones)", "normal", "#1a7f37", is_leukaemia=False),
    ClassInfo("early", "Early Stage", "Early Pre-B ALL", "cancerous/early", "#d4a72c", is_leukaemia=True),
    ClassInfo("mid", "Mid Stage", "Pre-B ALL", "cancerous/mid", "#e16f24", is_leukaemia=True),
    ClassInfo("advanced", "Advanced Stage", "Pro-B ALL", "cancerous/advanced", "#cf222e", is_leukaemia=True),
)

CLASS_KEYS: tuple[str, ...] = tuple(c.key for c in CLASSES)
BY_KEY: dict[str, ClassInfo] = {c.key: c for c in CLASSES}
LEUKAEMIA_KEYS: tuple[str, ...] = tuple(c.key for c in CLASSES if c.is_leukaemia)
(NORMAL_KEY,) = (c.key for c in CLASSES if not c.is_leukaemia)  # exactly one class is not a leukaemia

UNCERTAIN_KEY = "uncertain"
UNCERTAIN_DISPLAY_NAME = "Uncertain"
UNCERTAIN_COLOUR = "#6e7781"

# A reviewer's call that is not a class: the sample cannot be called from its fields (too few usable ones, or none).
# Never a model output; a reviewer who gives it must say why (cases.service requires a comment or reason).
NON_DIAGNOSTIC_KEY = "non_diagnostic"
NON_DIAGNOSTIC_DISPLAY_NAME = "Non-diagnostic"
NON_DIAGNOSTIC_MEANING = "insufficient or unusable fields"
NON_DIAGNOSTIC_COLOUR = "#8250df"
FINAL_CALLS: tuple[str, ...] = (*CLASS_KEYS, NON_DIAGNOSTIC_KEY)  # what a reviewer's final call may be

DISCLAIMER = (
    "Research decision support, not a diagnosis. Class names are the seed paper's stage names for the dataset's "
    "B-ALL subtypes (flow cytometry labels), not clinical stages."
)


def class_info(key: str) -> ClassInfo:
    """Look up a class by key; the error lists the valid keys."""
    try:
        return BY_KEY[key]
    except KeyError:
        raise ValueError(f"unknown class {key!r}; expected one of {', '.join(CLASS_KEYS)}") from None


def _folded(text: str) -> str:
    return " ".join(text.split()).casefold()


_BY_NAME: dict[str, ClassInfo] = {
    _folded(name): c for c in CLASSES for name in (c.key, c.display_name, c.dataset_label)
}


def parse_class(text: str) -> ClassInfo:
    """A class from what a person types: its key, display name or dataset label, in any case ("mid", "Mid",
    "Mid Stage", "pre-b all"). The CLI's ``--class`` and the web API's ``?class=`` both call this.

    Raises:
        ValueError: no class matches; the message lists the keys and the display names.
    """
    found = _BY_NAME.get(_folded(str(text)))
    if found is None:
        names = ", ".join(c.display_name for c in CLASSES)
        raise ValueError(
            f"unknown class {text!r}; expected one of {', '.join(CLASS_KEYS)} (any case), or a display name: {names}"
        )
    return found


_NON_DIAGNOSTIC_NAMES = frozenset(
    _folded(n) for n in (NON_DIAGNOSTIC_KEY, NON_DIAGNOSTIC_DISPLAY_NAME, "non diagnostic", "nondiagnostic")
)


def parse_final_call(text: str) -> str:
    """A reviewer's final call from what a person or a client sends: a class as :func:`parse_class` reads it
    (key, display name or dataset label, any case), or ``non_diagnostic`` ("Non-diagnostic"); returns its key.

    Raises:
        ValueError: neither; the message lists what is accepted.
    """
    if _folded(str(text)) in _NON_DIAGNOSTIC_NAMES:
        return NON_DIAGNOSTIC_KEY
    try:
        return parse_class(text).key
    except ValueError:
        names = ", ".join(c.display_name for c in CLASSES)
        raise ValueError(
            f"unknown call {str(text)[:40]!r}; expected one of {', '.join(FINAL_CALLS)} (any case), or a display "
            f"name: {names}, {NON_DIAGNOSTIC_DISPLAY_NAME}"
        ) from None


def luminance(hex_colour: str) -> float:
    """WCAG relative luminance of ``#rrggbb``."""
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def text_colour(background: str) -> str:
    """Black or white, whichever contrasts more with ``background`` (yellow and orange badges get dark text).

    Here, beside the colours, so the web page and the PDF report paint badges alike.
    """
    lum = luminance(background)
    return "#000000" if (lum + 0.05) / 0.05 > 1.05 / (lum + 0.05) else "#ffffff"


def probability_column(key: str) -> str:
    """A class's probability as a flat table column, the same in every table leukostage writes (batch csv and
    parquet, a case's CSV export): the nested ``probabilities`` field flattened one level, ``probabilities_<key>``."""
    return f"probabilities_{key}"


# --- a result that asserts no class, and how the picture was taken, in words (issue 18; the reasons: outcomes) --------
# Every surface (the page, the case page, the CLI, the PDF) says these, and never names a class for an uncertain or
# refused result: no class colour, no "top class", no heat map titled as evidence. The probabilities stay available,
# behind a disclosure labelled as not evidence.
NOT_EVIDENCE_LABEL = "Model probabilities (not evidence: no class is asserted)"
EYEPIECE_MODE = "eyepiece"  # capture.mode of a phone photo through the eyepiece (its round field found and cropped)
EYEPIECE_NOTE = "Photo through the eyepiece: field cropped"
RESCALED_NOTE = "rescaled to the training scale"


def capture_note(capture: object) -> str | None:
    """The small note a result carries about how its picture was taken: a photo through the eyepiece had its round
    field cropped (and maybe rescaled to the training scale by the red-cell ruler); a direct capture rescaled is said
    too. None when there is nothing to say (a direct capture used as it was, or a result without ``capture``)."""
    if not isinstance(capture, dict):
        return None
    rescaled = capture.get("rescaled_by") is not None
    if capture.get("mode") == EYEPIECE_MODE:
        return EYEPIECE_NOTE + (f", {RESCALED_NOTE}" if rescaled else "")
    return f"Field {RESCALED_NOTE}" if rescaled else None
