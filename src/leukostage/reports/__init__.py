"""A case as a document, in the formats of :data:`FORMATS`: a PDF report (``pdf``), a FHIR R4 bundle (``fhir``), a
CSV table of its fields (``csv``).

:data:`FORMATS` is the one list of them: the case API's routes, its OpenAPI description and the case page's download
links are all made from it, so a new format is one module here (with a ``render(case, inputs)`` function) and one
entry. Renderers are pure functions of the case dict (``cases.service.case_dict``) and of
:class:`ReportInputs`: no database, no Flask, no torch. What every report says the same way (class names, the
reviewer's final call, a field's shown label) lives in ``content``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

ReadImage = Callable[[str], bytes]  # the stored bytes of a field, by its SHA-256
Overlay = Callable[[bytes], "bytes | None"]  # a Grad-CAM overlay PNG of a field's bytes, None where there is none


@dataclass(frozen=True)
class ReportInputs:
    """What a report may use besides the case: the serving model's card, the fields' images and their heat maps."""

    card: dict
    read_image: ReadImage
    overlay: Overlay


@dataclass(frozen=True)
class ReportFormat:
    """One format: how it is served, named and listed. Its renderer is ``reports.<name>.render``."""

    name: str  # the module, the audit event's ``format``, the page's link id (download-<name>)
    path: str  # the route: /api/v1/cases/<id>/<path>
    media_type: str
    label: str  # the case page's link text; the OpenAPI answer's description
    summary: str  # the OpenAPI operation's summary
    suffix: str  # the download is named case-<id><suffix>
    attachment: bool  # sent as an attachment (Content-Disposition); else the page's link names the download

    def filename(self, case_id: int) -> str:
        return f"case-{case_id}{self.suffix}"

    def renderer(self) -> Callable[[dict, ReportInputs], bytes | str]:
        """The function that renders this format, ``reports.<name>.render``. Its module is imported here, on first
        use: ReportLab and fhir.resources take about half a second each to import, which no app start or other
        route should pay.

        Raises:
            ImportError: the module, or a library it needs, is missing from this build.
        """
        return import_module(f"{__name__}.{self.name}").render


FORMATS: dict[str, ReportFormat] = {
    f.name: f
    for f in (
        ReportFormat(
            name="pdf",
            path="report.pdf",
            media_type="application/pdf",
            label="Report (PDF)",
            summary="The case report as PDF.",
            suffix=".pdf",
            attachment=True,
        ),
        ReportFormat(
            name="fhir",
            path="fhir",
            media_type="application/fhir+json",
            label="FHIR R4 bundle (JSON)",
            summary="A FHIR R4 Bundle: DiagnosticReport, Observations, Device, Provenance; AI parts labelled AIAST.",
            suffix="-fhir.json",
            attachment=False,
        ),
        ReportFormat(
            name="csv",
            path="export.csv",
            media_type="text/csv",
            label="Fields (CSV)",
            summary="One CSV row per field.",
            suffix=".csv",
            attachment=True,
        ),
    )
}
