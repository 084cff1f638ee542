"""The Dask worker plugin that loads the model once per worker (imported only when a cluster is used)."""

from __future__ import annotations

from urllib.parse import urlparse

from distributed.diagnostics.plugin import WorkerPlugin

from ..cores import cpu_count, limit_opencv_threads, threads_per_worker
from .score import load_predictor


class ModelPlugin(WorkerPlugin):
    """Load the model when a worker starts (or joins later), with ONNX Runtime threads = the host's cores / the
    Dask threads on that host. The model path (None: the model inside the installed package) must exist on every
    worker's machine."""

    name = "leukostage-model"

    def __init__(self, model: str | None, threads_on_hosts: dict[str, int]):
        self.model = model
        self.threads_on_hosts = threads_on_hosts

    def setup(self, worker) -> None:
        host = urlparse(worker.address).hostname or ""
        threads = threads_per_worker(self.threads_on_hosts.get(host) or worker.state.nthreads, cpu_count())
        limit_opencv_threads(threads)
        load_predictor(self.model, threads)
