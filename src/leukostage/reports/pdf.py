"""A case as a printable PDF report (ReportLab: pure pip, no system libraries, so a fresh machine installs it).

One A4 document: the accession and dates, the model's call with its rule and the reviewer's final call, a
class-proportion chart, a thumbnail of every field with its badge, Grad-CAM overlays of the fields that weigh most
in the call, the model with its card's limits, and the disclaimer on every page. Images come through the caller's
``read_image(sha256)``; the heat maps through ``overlay(image_bytes)`` (a PNG, or None where the model cannot
explain): this module never opens a database, a model or a file of its own, except fonts.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np
from reportlab.graphics.shapes import Drawing, Line, Rect, String
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    CondPageBreak,
    Image,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from ..classes import (
    BY_KEY,
    CLASS_KEYS,
    DISCLAIMER,
    NON_DIAGNOSTIC_KEY,
    NON_DIAGNOSTIC_MEANING,
    text_colour,
)
from ..imaging import ImageError, cap_longest_side, decode_image
from ..outcomes import refusal_code
from . import Overlay, ReadImage, ReportInputs, content

MARGIN = 15 * mm
THUMBS_PER_ROW = 6
THUMB_SIDE = 26 * mm
THUMB_MAX_PX = 240  # thumbnails are re-encoded this small: 80 fields stay a few MB
OVERLAY_MAX_PX = 480
TOP_FIELDS = 4  # Grad-CAM overlays shown
FALLBACK_LIMITS = (  # true of every leukostage model; shown when a card states no limits of its own
    "Trained and tested on one hospital's images (the Taleqani dataset); accuracy on other laboratories' stains, "
    "microscopes and cameras is not established.",
    "The four classes are the dataset's B-ALL subtypes (flow-cytometry labels) under the seed paper's stage names, "
    "not clinical stages.",
    "Fields below the model's confidence threshold are called uncertain; fields outside its training domain and "
    "images refused by the input check do not enter the case call.",
)


def render(case: dict, inputs: ReportInputs) -> bytes:
    """The ``pdf`` format of the registry (see :data:`leukostage.reports.FORMATS`)."""
    return case_pdf(case, inputs.card, inputs.read_image, inputs.overlay)


def case_pdf(case: dict, card: dict, read_image: ReadImage, overlay: Overlay) -> bytes:
    """The case report as PDF bytes.

    Args:
        case: the case dict (``cases.service.case_dict``).
        card: the serving model's card (intended use, training data, metrics, limits).
        read_image: bytes of a stored field by its SHA-256; an error for one field shows that field as missing.
        overlay: a Grad-CAM overlay PNG for a field's bytes, or None.
    """
    styles = _Styles()
    images = _ImageCache(read_image)
    out = io.BytesIO()
    doc = SimpleDocTemplate(
        out,
        pagesize=A4,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN + 6 * mm,
        title=f"leukostage case report {case['accession']}",
        author="leukostage",
        subject="Research decision support, not a diagnosis",
    )
    width = doc.width
    story = [
        *_heading(case, styles),
        *_facts(case, styles, width),
        *_calls(case, styles, width),
        *_chart_section(case, styles, width),
        *_fields_section(case, styles, images, width),
        *_explanations(case, styles, images, overlay, width),
        *_model_section(case, card, styles),
    ]
    footer = _footer(case, styles.font)
    doc.build(story, canvasmaker=lambda *a, **k: _NumberedCanvas(*a, footer=footer, **k))
    return out.getvalue()


# --- fonts and styles ---------------------------------------------------------------------------------------------

FONT_CANDIDATES = (  # a Unicode TTF so names and comments in any Latin, Greek or Cyrillic script print
    (
        Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
        Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),
    ),
)


def _register_fonts() -> tuple[str, str]:
    """DejaVu Sans where Debian has it, else ReportLab's bundled Vera (DejaVu's ancestor): no download either way."""
    if "LeukoSans" in pdfmetrics.getRegisteredFontNames():
        return "LeukoSans", "LeukoSans-Bold"
    import reportlab

    bundled = Path(reportlab.__file__).parent / "fonts"
    for regular, bold in (*FONT_CANDIDATES, (bundled / "Vera.ttf", bundled / "VeraBd.ttf")):
        if regular.is_file() and bold.is_file():
            pdfmetrics.registerFont(TTFont("LeukoSans", str(regular)))
            pdfmetrics.registerFont(TTFont("LeukoSans-Bold", str(bold)))
            pdfmetrics.registerFontFamily(
                "LeukoSans", normal="LeukoSans", bold="LeukoSans-Bold", italic="LeukoSans", boldItalic="LeukoSans-Bold"
            )
            return "LeukoSans", "LeukoSans-Bold"
    return "Helvetica", "Helvetica-Bold"


class _Styles:
    def __init__(self):
        self.font, self.bold = _register_fonts()
        base = ParagraphStyle(
            "body", fontName=self.font, fontSize=9.5, leading=12.5, textColor=colors.HexColor("#1f2328")
        )
        self.body = base
        self.small = ParagraphStyle("small", base, fontSize=8, leading=10, textColor=colors.HexColor("#57606a"))
        self.caption = ParagraphStyle("caption", self.small, fontSize=6.8, leading=8.2, alignment=TA_CENTER)
        self.title = ParagraphStyle("title", base, fontName=self.bold, fontSize=18, leading=22, spaceAfter=2)
        self.h2 = ParagraphStyle(
            "h2", base, fontName=self.bold, fontSize=12.5, leading=16, spaceBefore=10, spaceAfter=4
        )
        self.notice = ParagraphStyle(
            "notice",
            base,
            backColor=colors.HexColor("#fff8c5"),
            borderColor=colors.HexColor("#9a6700"),
            borderWidth=0.8,
            borderPadding=5,
            spaceBefore=6,
            spaceAfter=10,
        )


def _p(text: str, style: ParagraphStyle) -> Paragraph:
    """A paragraph of plain text (escaped: names, notes and comments come from users)."""
    return Paragraph(escape(text), style)


# --- images -------------------------------------------------------------------------------------------------------


class _ImageCache:
    """Each stored field read once; a field that cannot be read is None, and the report says so for it."""

    def __init__(self, read_image: ReadImage):
        self._read = read_image
        self._bytes: dict[str, bytes | None] = {}

    def data(self, sha256: str) -> bytes | None:
        if sha256 not in self._bytes:
            try:
                self._bytes[sha256] = self._read(sha256)
            except (OSError, KeyError, ValueError):  # missing from the store, or not a valid id
                self._bytes[sha256] = None
        return self._bytes[sha256]


def _jpeg(rgb: np.ndarray, max_px: int) -> tuple[bytes, int, int]:
    """A small JPEG of an RGB array (at most ``max_px`` on its longest side) and its size."""
    rgb = cap_longest_side(rgb, max_px)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes(), rgb.shape[1], rgb.shape[0]


def _picture(data: bytes | None, box: float, max_px: int) -> Image | None:
    """A flowable image fitted into a ``box`` x ``box`` square, or None for bytes that do not decode."""
    if data is None:
        return None
    try:
        jpeg, w, h = _jpeg(decode_image(data), max_px)
    except (ImageError, ValueError, cv2.error):
        return None
    scale = box / max(w, h)
    return Image(io.BytesIO(jpeg), width=w * scale, height=h * scale)


def _placeholder(text: str, box: float, styles: _Styles) -> Table:
    cell = Table([[_p(text, styles.caption)]], colWidths=[box], rowHeights=[box])
    cell.setStyle(
        TableStyle(
            [("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#eaeef2")), ("VALIGN", (0, 0), (-1, -1), "MIDDLE")]
        )
    )
    return cell


# --- badges and the chart ----------------------------------------------------------------------------------------


def _colour(key: str) -> str:
    return content.colour(key)


def _badge(key: str, font: str, width: float = THUMB_SIDE, height: float = 4.6 * mm, size: float = 7) -> Drawing:
    """A rounded badge in the class colour, text black or white for contrast (as on the web page)."""
    label = "Refused" if key == content.REFUSED else content.display_name(key)
    d = Drawing(width, height)
    d.add(
        Rect(
            0,
            0,
            width,
            height,
            rx=height / 2,
            ry=height / 2,
            fillColor=colors.HexColor(_colour(key)),
            strokeColor=colors.Color(0, 0, 0, 0.25),
            strokeWidth=0.5,
        )
    )
    d.add(
        String(
            width / 2,
            height / 2 - size * 0.35,
            label,
            fontName=font,
            fontSize=size,
            textAnchor="middle",
            fillColor=colors.HexColor(text_colour(_colour(key))),
        )
    )
    return d


def _chart(case: dict, styles: _Styles, width: float) -> Drawing:
    """Per class: a thick bar for the share of counted fields the model gave that class, a thin dark bar for the
    mean probability of that class over the counted fields (what the mean rule reads)."""
    summary = case["summary"]
    shares = content.class_shares(summary) or {k: 0.0 for k in CLASS_KEYS}
    means = summary.get("mean_probabilities") or {}
    label_w, value_w, row_h, top = 48 * mm, 44 * mm, 11 * mm, 7 * mm
    track_w = width - label_w - value_w
    d = Drawing(width, top + row_h * len(CLASS_KEYS))
    d.add(Rect(label_w, d.height - 4.2 * mm, 4 * mm, 2.4 * mm, fillColor=colors.HexColor("#57606a"), strokeWidth=0))
    d.add(String(label_w + 5.5 * mm, d.height - 4 * mm, "share of counted fields", fontName=styles.font, fontSize=7))
    d.add(Rect(label_w + 42 * mm, d.height - 3.4 * mm, 4 * mm, 0.9 * mm, fillColor=colors.black, strokeWidth=0))
    d.add(String(label_w + 47.5 * mm, d.height - 4 * mm, "mean probability", fontName=styles.font, fontSize=7))
    for i, key in enumerate(CLASS_KEYS):
        y = d.height - top - (i + 1) * row_h + 2 * mm
        info = BY_KEY[key]
        d.add(String(0, y + 4 * mm, info.display_name, fontName=styles.bold, fontSize=8.5))
        d.add(
            String(
                0,
                y + 0.8 * mm,
                info.dataset_label,
                fontName=styles.font,
                fontSize=7,
                fillColor=colors.HexColor("#57606a"),
            )
        )
        d.add(
            Rect(
                label_w,
                y,
                track_w,
                6.5 * mm,
                fillColor=colors.HexColor("#eaeef2"),
                strokeColor=colors.HexColor("#d0d7de"),
                strokeWidth=0.5,
            )
        )
        d.add(
            Rect(
                label_w,
                y + 1.8 * mm,
                track_w * shares[key],
                4.7 * mm,
                fillColor=colors.HexColor(info.colour),
                strokeWidth=0,
            )
        )
        if key in means:
            d.add(
                Rect(
                    label_w, y + 0.4 * mm, track_w * float(means[key]), 1.1 * mm, fillColor=colors.black, strokeWidth=0
                )
            )
        d.add(
            String(
                label_w + track_w + 2 * mm,
                y + 3.6 * mm,
                f"{content.percent(shares[key])} of fields",
                fontName=styles.font,
                fontSize=8,
            )
        )
        d.add(
            String(
                label_w + track_w + 2 * mm,
                y + 0.6 * mm,
                f"mean p {content.percent(float(means[key])) if key in means else '—'}",
                fontName=styles.font,
                fontSize=7,
                fillColor=colors.HexColor("#57606a"),
            )
        )
    d.add(Line(label_w, d.height - top, label_w, 0, strokeColor=colors.HexColor("#8c959f"), strokeWidth=0.5))
    return d


# --- sections -----------------------------------------------------------------------------------------------------


def _heading(case: dict, styles: _Styles) -> list:
    lead, _, rest = DISCLAIMER.partition(". ")
    return [
        Paragraph(f"Case report &nbsp;{escape(case['accession'])}", styles.title),
        _p(
            "leukostage: blood smear fields classified by a machine-learning model, reviewed by a haematologist",
            styles.small,
        ),
        Paragraph(f"<b>{escape(lead)}.</b> {escape(rest)}", styles.notice),
    ]


def _facts(case: dict, styles: _Styles, width: float) -> list:
    summary = case["summary"]
    review = case.get("review")
    n = len(case.get("images") or [])
    rows = [
        ("Accession", case["accession"]),
        ("Patient reference", case.get("patient_ref") or "none given"),
        ("Status", content.STATUS_NAMES.get(case["status"], case["status"])),
        ("Created", f"{content.show_time(case['created_at'])} by {case['created_by']}"),
        ("Last updated", content.show_time(case.get("updated_at"))),
        (
            "Signed off",
            f"{content.show_time(review['signed_off_at'])} by {review['reviewer']}"
            if review
            else "not yet: this report is preliminary",
        ),
        *(
            [
                (
                    "Amended",
                    f"{len(case['amendments'])} time(s) after sign-off, last {content.show_time(last['at'])} by "
                    f"{last['by']}",
                )
                for last in case.get("amendments", [])[-1:]
            ]
        ),
        ("Model", f"{case['model']['name']} {case['model']['version']}"),
        (
            "Fields",
            f"{n} uploaded: {summary.get('counted') or 0} counted in the call, "
            f"{content.uncertain_total(summary)} uncertain, {content.refused_total(summary)} refused by the "
            f"input check",
        ),
    ]
    if case.get("note"):
        rows.append(("Note", case["note"]))
    table = Table([[_p(k, styles.small), _p(v, styles.body)] for k, v in rows], colWidths=[34 * mm, width - 34 * mm])
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
                ("TOPPADDING", (0, 0), (-1, -1), 2),
                ("LINEBELOW", (0, 0), (-1, -2), 0.3, colors.HexColor("#d0d7de")),
            ]
        )
    )
    return [table]


def _call_row(title: str, key: str | None, detail: str, styles: _Styles, width: float) -> Table:
    badge = _badge(key, styles.bold, width=30 * mm, height=6 * mm, size=9) if key else _p("—", styles.body)
    subtype = f"dataset subtype: {BY_KEY[key].dataset_label}" if key in BY_KEY else ""
    if key == NON_DIAGNOSTIC_KEY:
        subtype = f"the sample cannot be called: {NON_DIAGNOSTIC_MEANING}"
    row = Table(
        [[_p(title, styles.small), badge, [_p(subtype, styles.body), _p(detail, styles.small)]]],
        colWidths=[34 * mm, 34 * mm, width - 68 * mm],
    )
    row.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                ("TOPPADDING", (0, 0), (-1, -1), 4),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
            ]
        )
    )
    return row


def _calls(case: dict, styles: _Styles, width: float) -> list:
    summary = case["summary"]
    final = content.final_call(case)
    out = [
        Paragraph("The call", styles.h2),
        _call_row("Model's call", summary["case_call"], summary.get("case_rule") or "", styles, width),
    ]
    if final is None:
        out.append(
            _call_row(
                "Reviewer's final call",
                None,
                "Not reviewed yet. A haematologist must review and sign off this case.",
                styles,
                width,
            )
        )
        return out
    now = content.current(case)
    if now["kind"] == "amended":
        made = f"Amended {content.show_time(now['at'])} by {now['by']}. Reason: {now['reason']}."
    else:
        made = f"Signed off {content.show_time(now['at'])} by {now['by']}."
    said = f" Comment: {now['comment']}" if now["comment"] else " No comment."
    out.append(_call_row("Reviewer's final call", final, made + said, styles, width))
    earlier = content.history(case)[:-1]
    if earlier:
        out.append(_p("History (superseded by the call above):", styles.small))
        out += [_p(f"\u2013 {content.statement_line(s)}", styles.small) for s in earlier]
    overrides = [i for i in case.get("images") or [] if i.get("override")]
    if overrides:
        out.append(
            _p(
                f"The reviewer relabelled {len(overrides)} field(s); the model's own results are kept beside "
                f"the overrides and are what the chart shows.",
                styles.small,
            )
        )
    return out


def _chart_section(case: dict, styles: _Styles, width: float) -> list:
    counted = case["summary"].get("counted") or 0
    note = (
        f"Over the {counted} counted field(s). Uncertain (low-confidence) fields count through their "
        f"probabilities but carry no class, so the shares may add up to less than 100%."
        if counted
        else "No field could be counted: the chart is empty and the call is uncertain."
    )
    return [
        KeepTogether([Paragraph("Class proportions", styles.h2), _chart(case, styles, width), _p(note, styles.small)])
    ]


def _field_cell(image: dict, styles: _Styles, images: _ImageCache) -> list:
    shown = content.shown_label(image)
    result = image.get("result") or {}
    picture = _picture(images.data(image["sha256"]), THUMB_SIDE, THUMB_MAX_PX)
    if picture is None:
        picture = _placeholder("image not available", THUMB_SIDE, styles)
    if not result.get("valid"):
        detail = f"refused: {refusal_code(result)}"
    elif image.get("override"):
        detail = f"reviewer override (model: {content.display_name(content.model_label(image))})"
    elif not content.asserts_class(image):  # no class asserted: said without naming one
        detail = content.uncertain_detail(image)
    else:
        detail = f"p {content.percent(result.get('confidence'))}"
    name = image.get("filename") or ""
    name = name if len(name) <= 22 else name[:10] + "…" + name[-10:]
    return [
        picture,
        Spacer(1, 1 * mm),
        _badge(shown, styles.bold),
        _p(f"#{image['image_id']} {name}", styles.caption),
        _p(detail, styles.caption),
    ]


def _fields_section(case: dict, styles: _Styles, images: _ImageCache, width: float) -> list:
    fields = case.get("images") or []
    out = [CondPageBreak(50 * mm), Paragraph(f"Fields ({len(fields)})", styles.h2)]
    if not fields:
        return out + [_p("No field has been uploaded.", styles.body)]
    out.append(
        _p(
            "Each field with the label it carries now (the reviewer's override where there is one, else the "
            "model's) and, beneath, the model's confidence or why the field was not counted.",
            styles.small,
        )
    )
    cells = [_field_cell(i, styles, images) for i in fields]
    rows = [cells[i : i + THUMBS_PER_ROW] for i in range(0, len(cells), THUMBS_PER_ROW)]
    rows[-1] += [""] * (THUMBS_PER_ROW - len(rows[-1]))
    grid = Table(rows, colWidths=[width / THUMBS_PER_ROW] * THUMBS_PER_ROW, repeatRows=0)
    grid.setStyle(
        TableStyle(
            [
                ("ALIGN", (0, 0), (-1, -1), "CENTER"),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("TOPPADDING", (0, 0), (-1, -1), 4),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
            ]
        )
    )
    return out + [grid]


def top_fields(case: dict, n: int = TOP_FIELDS) -> list[dict]:
    """The counted fields that weigh most for the model's call: highest probability of the called class (of their
    own class when the call is uncertain). Only fields the model gave a class qualify: a heat map here is captioned
    as evidence for that class, and an uncertain field (low confidence, out of domain) or a refused one has none."""
    call = case["summary"]["case_call"]
    ranked = []
    for image in case.get("images") or []:
        result = image.get("result") or {}
        probabilities = result.get("probabilities")
        if not content.asserts_class(image) or not isinstance(probabilities, dict):
            continue
        if call in BY_KEY:
            if result.get("top_class") != call:
                continue
            score = float(probabilities.get(call, 0.0))
        else:
            score = float(result.get("confidence") or 0.0)
        ranked.append((score, image))
    ranked.sort(key=lambda pair: -pair[0])
    return [image for _, image in ranked[:n]]


def _explanations(case: dict, styles: _Styles, images: _ImageCache, overlay: Overlay, width: float) -> list:
    chosen = top_fields(case)
    heading = [CondPageBreak(70 * mm), Paragraph("Where the model looked: Grad-CAM on the top fields", styles.h2)]
    if not chosen:
        return heading + [_p("No counted field supports the call, so no heat map is shown.", styles.body)]
    side = (width - 8 * mm) / 4
    pairs, missing = [], 0
    for image in chosen:
        data = images.data(image["sha256"])
        png = overlay(data) if data is not None else None
        heat = _picture(png, side, OVERLAY_MAX_PX) if png else None
        if heat is None:
            missing += 1
            continue
        original = _picture(data, side, OVERLAY_MAX_PX)
        result = image["result"]
        caption = (
            f"#{image['image_id']} {image.get('filename') or ''}: {content.display_name(result['top_class'])} "
            f"{content.percent(float(result['probabilities'][result['top_class']]))}"
        )
        pairs.append([[original, _p("original", styles.caption)], [heat, _p(caption, styles.caption)]])
    out = heading + [
        _p(
            "Heat maps of the evidence for each field's top class (Grad-CAM on the last convolutional "
            "layer): where the model's evidence lies, not a segmentation, and not diagnostic.",
            styles.small,
        )
    ]
    if pairs:
        rows = [sum(pairs[i : i + 2], []) for i in range(0, len(pairs), 2)]
        rows[-1] += [""] * (4 - len(rows[-1]))
        grid = Table(rows, colWidths=[width / 4] * 4)
        grid.setStyle(TableStyle([("ALIGN", (0, 0), (-1, -1), "CENTER"), ("VALIGN", (0, 0), (-1, -1), "TOP")]))
        out.append(grid)
    if missing:
        out.append(
            _p(
                f"No heat map for {missing} of the top fields (the model cannot explain them, or the image is "
                f"not available).",
                styles.small,
            )
        )
    return out


def _metric_lines(card: dict) -> list[str]:
    lines = []
    for part, name in (("blocked_test", "blocked split (unseen patients)"), ("random_test", "random split")):
        m = (card.get("metrics") or {}).get(part)
        if not m or "accuracy" not in m:
            continue
        recall = m.get("recall") or {}
        per_class = ", ".join(
            f"{BY_KEY[k].display_name} {content.percent(recall[k])}" for k in CLASS_KEYS if k in recall
        )
        lines.append(
            f"Test accuracy on the {name}: {content.percent(m['accuracy'])} over {m.get('n', '?')} images"
            + (f"; recall {per_class}" if per_class else "")
            + "."
        )
    return lines


def _limits(card: dict) -> list[str]:
    """The card's own limitations (a list or a text), each once and without the disclaimer that heads every page;
    what holds for every leukostage model only when the card states none (a card's list already says it in its own
    words: both would repeat a bullet)."""
    own = card.get("limitations") or card.get("limits") or []
    if isinstance(own, str):
        own = [own]
    lead = DISCLAIMER.split(". ")[0].casefold()  # on every page already (notice and footer)
    lines = [x for x in dict.fromkeys(str(x).strip() for x in own) if x and not x.casefold().startswith(lead)]
    return lines or list(FALLBACK_LIMITS)


def _model_section(case: dict, card: dict, styles: _Styles) -> list:
    """The model and its limits, kept together: a page break moves the whole section rather than leaving a few of
    its lines alone on a last page."""
    name, version = case["model"]["name"], case["model"]["version"]
    out = [
        Paragraph("The model and its limits", styles.h2),
        _p(f"Results made by model {name} {version}.", styles.body),
    ]
    if (card.get("name"), card.get("version")) != (name, version):
        out.append(
            _p(
                f"This server now runs model {card.get('name')} {card.get('version')}; the card below is that "
                f"model's, not the one that made these results.",
                styles.small,
            )
        )
    if card.get("intended_use"):
        out.append(_p(f"Intended use: {card['intended_use']}", styles.body))
    training = card.get("training") or {}
    if training.get("data"):
        out.append(
            _p(
                f"Training data: {training['data']}"
                + (f", {training['split']} split" if training.get("split") else "")
                + ".",
                styles.body,
            )
        )
    for line in _metric_lines(card):
        out.append(_p(line, styles.body))
    threshold = (card.get("decision") or {}).get("uncertain_below")
    if threshold is not None:
        out.append(_p(f"A field whose top probability is below {threshold:g} is called uncertain.", styles.body))
    out.append(Paragraph("<b>Limits</b>", styles.body))
    out += [_p(f"\u2022 {line}", styles.body) for line in _limits(card)]
    return [KeepTogether(out)]


# --- page furniture -----------------------------------------------------------------------------------------------


def _footer(case: dict, font: str) -> Callable[[Canvas, int, int], None]:
    accession = case["accession"] if len(case["accession"]) <= 32 else case["accession"][:31] + "\u2026"
    text = f"leukostage case {accession} \u00b7 {DISCLAIMER.split('. ')[0]}."  # leaves room for "page N of M"

    def draw(canvas: Canvas, page: int, pages: int) -> None:
        canvas.saveState()
        canvas.setFont(font, 7.5)
        canvas.setFillColor(colors.HexColor("#57606a"))
        canvas.drawString(MARGIN, MARGIN - 2 * mm, text)
        canvas.drawRightString(A4[0] - MARGIN, MARGIN - 2 * mm, f"page {page} of {pages}")
        canvas.restoreState()

    return draw


class _NumberedCanvas(Canvas):
    """Holds every page until the end so the footer can say "page N of M"."""

    def __init__(self, *args, footer: Callable[[Canvas, int, int], None], **kwargs):
        super().__init__(*args, **kwargs)
        self._pages: list[dict] = []
        self._draw_footer = footer

    def showPage(self):  # noqa: N802 (ReportLab's name)
        self._pages.append(dict(self.__dict__))
        self._startPage()

    def save(self):
        for n, state in enumerate(self._pages, start=1):
            self.__dict__.update(state)
            self._draw_footer(self, n, len(self._pages))
            super().showPage()
        super().save()
