"""What a view reaches for during a request, in one place (as flaskr's ``db.py``): the model this worker loaded, a
database transaction, the image store, and whether the model can explain itself.

:func:`init_app` puts the loaded model and the case settings on the app; every blueprint reads them through the
functions here, so no blueprint needs another (the application factory registers them all).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask, current_app
from sqlalchemy.orm import Session

from ..cases import db
from ..cases.config import database_url, image_store_kind, instance_dir, storage_dir
from ..cases.store import ImageStore, open_store
from ..explain import GRADCAM_OUTPUTS
from ..predict import Predictor

PREDICTOR_KEY = "leukostage.predictor"  # where the loaded model lives: app.extensions[PREDICTOR_KEY]


def init_app(app: Flask, loaded: Predictor) -> None:
    """Keep ``loaded`` for every request of ``app``, and settle where cases live.

    ``DATABASE_URL``, ``IMAGE_STORE``, ``STORAGE`` and ``INSTANCE`` come from $LEUKOSTAGE_DATABASE_URL,
    $LEUKOSTAGE_IMAGE_STORE, $LEUKOSTAGE_STORAGE and $LEUKOSTAGE_INSTANCE (read by ``create_app``'s prefixed-env
    config, or here through ``cases.config``).

    Raises:
        ValueError: an ``IMAGE_STORE`` other than ``database`` or ``files``.
    """
    app.extensions[PREDICTOR_KEY] = loaded
    app.config.setdefault("INSTANCE", str(instance_dir()))
    app.config.setdefault("DATABASE_URL", database_url())
    app.config.setdefault("STORAGE", str(storage_dir()))
    app.config["IMAGE_STORE"] = image_store_kind(app.config["DATABASE_URL"], app.config.get("IMAGE_STORE"))


def predictor() -> Predictor:
    """The model this worker loaded at start."""
    return current_app.extensions[PREDICTOR_KEY]


def can_explain() -> bool:
    """Whether the model's graph has the Grad-CAM outputs (every model `leukostage export` writes has them)."""
    return GRADCAM_OUTPUTS <= set(predictor().outputs)


@contextmanager
def transaction() -> Iterator[Session]:
    """One unit of work on the case database: committed when the block ends, rolled back if it raises."""
    with db.session_scope(current_app.config["DATABASE_URL"]) as session:
        yield session


def store() -> ImageStore:
    """The stored field images (by SHA-256): in the database or in files, as configured (``cases.store``)."""
    config = current_app.config
    return open_store(config["DATABASE_URL"], config["STORAGE"], config["IMAGE_STORE"])
