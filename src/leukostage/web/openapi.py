"""The OpenAPI 3.1 description of the page and the API, built from the same constants the views use."""

from __future__ import annotations

from .. import __version__
from ..classes import CLASS_KEYS, CLASSES, DISCLAIMER, UNCERTAIN_KEY
from ..explain import EXPLAIN_MAX_SIDE, METHOD
from ..imaging import MAX_PIXELS, MIN_SIDE, mebibytes
from ..outcomes import UNCERTAIN_REASONS
from .cases_openapi import case_paths, case_schemas, security_schemes
from .responses import STATUS_BY_CODE

_REF = "#/components/schemas/"


def _json(schema_name: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": _REF + schema_name}}}}


def _error(description: str) -> dict:
    return _json("Error", description)


def _upload_body(field: str, many: bool) -> dict:
    file_schema = {"type": "string", "format": "binary"}
    prop = {"type": "array", "items": file_schema, "minItems": 1} if many else file_schema
    return {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": [field], "properties": {field: prop}}}
        },
    }


def _explain_parameters() -> list[dict]:
    """``?explain`` and ``?class``, the same on both prediction routes (parsed by ``api.Explain``)."""
    return [
        {
            "name": "explain",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "examples": ["1"]},
            "description": "`1`, `true` or `yes` (any case): add a Grad-CAM `explanation` to each valid prediction. "
            "Any other value, or none, leaves it out. Rejected images never get one.",
        },
        {
            "name": "class",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "examples": list(CLASS_KEYS) + [CLASSES[2].display_name]},
            "description": "The class whose evidence the heat map shows (default: the predicted, top class): a key ("
            f"{', '.join(CLASS_KEYS)}) in any case, or a display name ("
            f"{', '.join(c.display_name for c in CLASSES)}). Implies `explain`; with `explain` set to "
            "an off value it is a 400 `class_without_explain`. An unknown class is a 400 `bad_class`.",
        },
    ]


def build_spec(config, model_info: dict) -> dict:
    """The spec for this app's config (upload limits) and loaded model (named in the description): the page and
    prediction routes here, the case routes and schemas from :mod:`.cases_openapi`."""
    return {
        "openapi": "3.1.0",
        "info": _info(model_info),
        "paths": {**_page_paths(), **_prediction_paths(config), **_service_paths(), **case_paths()},
        "components": {"schemas": {**_schemas(config), **case_schemas()}, "securitySchemes": security_schemes()},
    }


def _info(model_info: dict) -> dict:
    return {
        "title": "leukostage",
        "version": __version__,
        "summary": "Blood smear ALL subtype classification. " + DISCLAIMER,
        "description": f"Serving model {model_info['name']} {model_info['version']}. Every error is JSON "
        '`{"error": {"code", "message"}}`; no response is cached.',
    }


# --- schemas ----------------------------------------------------------------------------------------------------------
def _schemas(config) -> dict:
    """The prediction routes' schemas: results, rejections, errors and their parts."""
    return {
        "Prediction": _prediction_schema(config),
        "Explanation": _explanation_schema(),
        "Rejection": _rejection_schema(),
        "Error": _error_schema(),
        "Check": _check_schema(),
        "Timing": _timing_schema(),
        "ModelInfo": {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
        "Health": {"type": "object", "properties": {"status": {"const": "ok"}, "model": {"$ref": _REF + "ModelInfo"}}},
    }


def _prediction_schema(config) -> dict:
    """One valid image's answer: the CLI's ``predict --json`` object plus model, timing and explanation."""
    probabilities = {
        "type": "object",
        "required": list(CLASS_KEYS),
        "properties": {k: {"type": "number", "minimum": 0, "maximum": 1} for k in CLASS_KEYS},
    }
    return {
        "type": "object",
        "description": "The object `leukostage predict --json` prints for the image, plus model and timing_ms "
        "(and explanation when asked with `explain`).",
        "required": [
            "file",
            "valid",
            "label",
            "display_label",
            "confidence",
            "top_class",
            "uncertain_reason",
            "probabilities",
            "model",
            "timing_ms",
        ],
        "properties": {
            "file": {"type": "string", "description": "The uploaded file's name, echoed back."},
            "valid": {"const": True},
            "label": {
                "enum": [*CLASS_KEYS, UNCERTAIN_KEY],
                "description": "The class, or `uncertain` when the image is outside the model's training "
                "domain or its top probability is below the model card's decision "
                "threshold (`uncertain_reason` says which).",
            },
            "uncertain_reason": {
                "enum": [*UNCERTAIN_REASONS, None],
                "description": "Why no class is asserted: `outside_training_domain` (the image "
                "is unlike every training image: another laboratory, stain or "
                "magnification) or `low_confidence`; null when a class is.",
            },
            "domain": _domain_schema(),
            "display_label": {"type": "string", "description": "The seed paper's stage name."},
            "dataset_label": {
                "type": ["string", "null"],
                "description": "The dataset's B-ALL subtype (flow cytometry); null if uncertain.",
            },
            "confidence": {"type": "number"},
            "top_class": {"enum": list(CLASS_KEYS)},
            "probabilities": probabilities,
            "checks": {"type": "object", "additionalProperties": {"$ref": _REF + "Check"}},
            "model": {"$ref": _REF + "ModelInfo"},
            "timing_ms": {"$ref": _REF + "Timing"},
            "explanation": {"$ref": _REF + "Explanation"},
            "explanation_omitted": {
                "type": "object",
                "properties": {"code": {"const": "explain_limit"}, "message": {"type": "string"}},
                "description": "Instead of `explanation`, when this request's heat maps already use the "
                f"{config['MAX_EXPLAINED_PIXELS']:,} pixels one request may have.",
            },
        },
    }


def _explanation_schema() -> dict:
    return {
        "type": "object",
        "description": "Present only with `explain`: where the model's evidence for one class lies (Grad-CAM, "
        "not a segmentation, not diagnostic), drawn over the uploaded image, scaled down to at "
        f"most {EXPLAIN_MAX_SIDE} pixels on its longest side (never up).",
        "required": [
            "method",
            "class",
            "display_class",
            "dataset_label",
            "media_type",
            "width",
            "height",
            "colour_scale",
            "overlay_png_base64",
        ],
        "properties": {
            "method": {"type": "string", "examples": [METHOD]},
            "class": {
                "enum": list(CLASS_KEYS),
                "description": "The explained class: `class` if given, else the "
                "top class (also when the label is uncertain).",
            },
            "display_class": {"type": "string"},
            "dataset_label": {"type": "string"},
            "media_type": {"const": "image/png"},
            "width": {"type": "integer", "description": "Of the overlay PNG (the upload's, or scaled down)."},
            "height": {"type": "integer"},
            "colour_scale": _colour_scale_schema(),
            "overlay_png_base64": {
                "type": "string",
                "contentEncoding": "base64",
                "contentMediaType": "image/png",
                "description": "The image with the heat map drawn over it (see "
                "`colour_scale`), `width` x `height`, base64-encoded.",
            },
        },
    }


def _domain_schema() -> dict:
    """The domain check's part of a prediction (models that have one)."""
    return {
        "type": "object",
        "required": ["score", "threshold", "in_domain"],
        "description": "The domain check (models that have one): Mahalanobis distance of the "
        "image's pooled features from the training images'; above the "
        "threshold (chosen on validation images) it is outside the domain.",
        "properties": {
            "score": {"type": "number"},
            "threshold": {"type": "number"},
            "in_domain": {"type": "boolean"},
        },
    }


def _colour_scale_schema() -> dict:
    """How an explanation's heat is drawn: the colour stops and the opacity ramp."""
    return {
        "type": "object",
        "description": "How the heat is drawn: colours interpolated between the stops "
        "(0 = low, 1 = the map's peak); transparent below "
        "`transparent_below`, opacity rising to `max_alpha` at 1.",
        "properties": {
            "stops": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"at": {"type": "number"}, "colour": {"type": "string"}},
                },
            },
            "transparent_below": {"type": "number"},
            "max_alpha": {"type": "number"},
            "ramp": {
                "type": "array",
                "description": "The drawn colour and opacity at evenly spaced heat values (what a colour scale shows).",
                "items": {
                    "type": "object",
                    "properties": {
                        "at": {"type": "number"},
                        "colour": {"type": "string"},
                        "alpha": {"type": "number"},
                    },
                },
            },
        },
    }


def _rejection_schema() -> dict:
    return {
        "type": "object",
        "description": "A file of a batch that was not analysed: the validator's code and reason.",
        "required": ["file", "valid", "code", "reason"],
        "properties": {
            "file": {"type": "string"},
            "valid": {"const": False},
            "code": {"type": "string"},
            "reason": {"type": "string"},
            "checks": {"type": "object", "additionalProperties": {"$ref": _REF + "Check"}},
            "timing_ms": {"$ref": _REF + "Timing"},
        },
    }


def _error_schema() -> dict:
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {
                        "type": "string",
                        "examples": [
                            "no_file",
                            "empty_file",
                            "file_too_large",
                            "request_too_large",
                            "too_large",
                            "unreadable",
                            "low_saturation",
                            "over_time_budget",
                            "internal_error",
                        ],
                    },
                    "message": {"type": "string", "description": "What was wrong and how to fix it."},
                    "checks": {
                        "type": "object",
                        "additionalProperties": {"$ref": _REF + "Check"},
                        "description": "On 422: the validator's measurements and thresholds.",
                    },
                    "limit_bytes": {"type": "integer", "description": "On 413 for a size: the limit exceeded."},
                    "capture": {
                        "type": "object",
                        "description": "On 422, when the validator reports it: how the picture was taken "
                        "(`mode` `eyepiece`: a phone photo through the eyepiece, its round field cropped; "
                        "`direct`), as in a prediction's `capture`.",
                    },
                },
            }
        },
    }


def _check_schema() -> dict:
    return {
        "type": "object",
        "properties": {"value": {"type": "number"}, "threshold": {}, "passed": {"type": "boolean"}},
    }


def _timing_schema() -> dict:
    return {
        "type": "object",
        "description": "Server-side milliseconds per stage (a rejected image has decode, "
        "validate and total only; `explain`, Grad-CAM, only when asked, and "
        "then included in total).",
        "properties": {
            k: {"type": "number"} for k in ("decode", "validate", "preprocess", "inference", "explain", "total")
        },
    }


# --- error responses --------------------------------------------------------------------------------------------------
CLASS_ERRORS = (
    "an unknown `class` (`bad_class`; the message lists the valid keys and names), or `class` with "
    "`explain` turned off (`class_without_explain`)"
)


def _common_errors(config) -> dict:
    """What both prediction routes may answer whatever the upload: a server fault, no Grad-CAM, out of time."""
    return {
        "500": _error("`internal_error`: a fault in the server (logged); never the answer to a bad upload."),
        "501": _error("`explain_unavailable`: `explain` was asked of a model exported without the Grad-CAM outputs."),
        "503": _error(
            f"`over_time_budget`: the request needed more than {config['REQUEST_BUDGET_S']} s of server "
            "time (send fewer or smaller images, or ask without `explain`); `worker_timeout` / "
            "`worker_failed`: the worker serving it was stopped. Retrying later may succeed."
        ),
    }


def _single_errors(config) -> dict:
    """``/predict``'s request errors (a rejected image is an error status there too: see ``_single_rejections``)."""
    file_limit = mebibytes(config["MAX_FILE_BYTES"])
    return {
        **_common_errors(config),
        "400": _error(
            f"No file (`no_file`), an empty file (`empty_file`), more than one file (`too_many_files`), {CLASS_ERRORS}."
        ),
        "413": _error(
            f"`file_too_large`: the file is over {file_limit} (the per-file limit); `too_large`: the image "
            f"has over {MAX_PIXELS // 1_000_000} megapixels (read from its header, before decoding); `form_too_large`: "
            "too many form parts or an oversized text field. The message says which limit, and the size."
        ),
    }


def _batch_errors(config) -> dict:
    """``/api/v1/predict``'s errors that fail the whole request (a rejected image is an entry of the answer)."""
    file_limit, request_limit = mebibytes(config["MAX_FILE_BYTES"]), mebibytes(config["MAX_REQUEST_BYTES"])
    return {
        **_common_errors(config),
        "400": _error(
            f"No file (`no_file`), more than {config['MAX_FILES']} files (`too_many_files`), {CLASS_ERRORS}."
        ),
        "413": _error(
            f"`request_too_large`: the whole request is over {request_limit} (the per-request limit; "
            f"each file may still be up to {file_limit}); `form_too_large`: too many form parts or an "
            "oversized text field."
        ),
    }


def _single_rejections() -> dict:
    """How ``/predict`` answers an image the validator refuses: 415 by content, 422 for a picture that is no smear."""
    codes_415 = ", ".join(c for c, s in STATUS_BY_CODE.items() if s == 415)
    return {
        "415": _error(
            f"Not a supported image, decided by content ({codes_415}); accepted: JPEG, PNG, "
            "TIFF, BMP, a single still image."
        ),
        "422": _error(
            "A readable image that is not a usable blood smear photograph, or a smear whose capture "
            "cannot be read: the validator's code (e.g. low_saturation, abnormal_brightness, no_stain_profile, "
            "not_blood_smear; out_of_focus, underexposed, overexposed, magnification_out_of_range, whose "
            "reason says what was measured and what to do) and reason, with its checks and `capture`; also "
            f"`too_small` (a side under {MIN_SIDE} pixels)."
        ),
    }


# --- paths ------------------------------------------------------------------------------------------------------------
def _page_paths() -> dict:
    return {
        "/": {
            "get": {
                "summary": "The upload page (HTML, CSS and JS served by this app, no external resources).",
                "responses": {"200": {"description": "The page.", "content": {"text/html": {}}}},
            }
        }
    }


def _prediction_paths(config) -> dict:
    """``/predict`` (one image, a rejection is an error status) and ``/api/v1/predict`` (many, rejections listed)."""
    file_limit = mebibytes(config["MAX_FILE_BYTES"])
    return {
        "/predict": {
            "post": {
                "summary": "Classify one image (validation runs first).",
                "parameters": _explain_parameters(),
                "requestBody": _upload_body("file", many=False),
                "responses": {
                    "200": _json("Prediction", "The prediction."),
                    **_single_errors(config),
                    **_single_rejections(),
                },
            }
        },
        "/api/v1/predict": {
            "post": {
                "summary": "Classify one or many images; each file gets an entry, in upload order.",
                "parameters": _explain_parameters(),
                "requestBody": _upload_body("files", many=True),
                "responses": {
                    "200": {
                        "description": "One entry per file, in upload order: a prediction, or a rejection "
                        "(`valid: false` with the code and reason that `/predict` would answer "
                        "with an error status): `empty_file`, `file_too_large` (over "
                        f"{file_limit}), `too_large` (over {MAX_PIXELS // 1_000_000} megapixels), "
                        "`unreadable`, `unsupported_format`, `animated`, `too_small`, or the "
                        "validator's codes. Only the errors below fail the whole request.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": {"oneOf": [{"$ref": _REF + "Prediction"}, {"$ref": _REF + "Rejection"}]},
                                }
                            }
                        },
                    },
                    **_batch_errors(config),
                },
            }
        },
    }


def _service_paths() -> dict:
    """Readiness, the model card and this description."""
    return {
        "/api/v1/health": {
            "get": {
                "summary": "Readiness: 200 once the model is loaded.",
                "responses": {"200": _json("Health", "Ready."), "503": _error("The model is not loaded.")},
            }
        },
        "/api/v1/model": {
            "get": {
                "summary": "The model card (training data, split, metrics, intended use).",
                "responses": {"200": {"description": "The card.", "content": {"application/json": {}}}},
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "summary": "This description.",
                "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
            }
        },
    }
