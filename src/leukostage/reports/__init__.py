"""A case as a document: a FHIR R4 bundle (``fhir``), a PDF report (``pdf``), a CSV table of its fields (``csv``).

Pure functions of the case dict (docs: CASE_SCHEMA in the cases service, ``cases.service.case_dict``) and the model
card: no database, no Flask, no torch. What every report says the same way (class names, the reviewer's final call,
a field's shown label) lives in ``content``.
"""
