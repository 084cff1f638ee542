"""Running the app: gunicorn in production, Flask's development server with ``--debug``.

Each gunicorn worker builds its own app (and so loads its own ONNX session) after the fork. Workers share the cores,
so each gets ``max(1, cores // workers)`` ONNX Runtime and OpenCV threads: N workers never start more compute
threads than there are cores. Extra gunicorn settings (TLS, max requests) can be passed in ``GUNICORN_CMD_ARGS``, as
for the ``gunicorn`` command.

The access log (off unless ``$LEUKOSTAGE_ACCESS_LOG`` or ``serve --access-log`` turns it on) names a request by its
method and path only: never its query string (``?q=`` searches accession numbers), body, referer, cookies or
credentials, and a path that matches no route (which a client could fill with anything) is logged as ``<unmatched>``.
Case routes carry numeric ids only, so the log holds no accession number or patient reference, whatever log format
an operator passes in ``GUNICORN_CMD_ARGS`` (only the fields below are ever filled in).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import select
import shlex
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger as GunicornLogger
from gunicorn.workers.sync import SyncWorker

from ..cores import cpu_count, limit_opencv_threads, threads_per_worker
from . import REQUEST_BUDGET_S

# A request stops itself (503 over_time_budget) once REQUEST_BUDGET_S is spent, checking between steps; one step is
# at most one image of MAX_PIXELS decoded, validated and explained. gunicorn's timeout, which kills the worker, stays
# above budget + one step, so a slow request gets its JSON 503 and the worker lives on.
WORST_STEP_S = 40
GRACEFUL_TIMEOUT_S = 10  # on SIGTERM, finish requests in flight for at most this long
MODEL_CHECK_TIMEOUT_S = 120  # serve's one-off load of the model before gunicorn starts (a few seconds when healthy)

ACCESS_LOG_ENV = "LEUKOSTAGE_ACCESS_LOG"  # unset/0/false: off; 1/true/-: stdout; anything else: a file to append to
ACCESS_LOG_FORMAT = '%(h)s %(t)s "%(r)s" %(s)s %(B)s %(M)sms'  # client, time, "METHOD /path HTTP/1.1", status, ...
# The only gunicorn log atoms ever filled in (any other, e.g. %(q)s, %(f)s or %({cookie}i)s, logs "-"): client
# address, time, method, path (as loggable_path gives it), protocol, status, size, duration, worker pid.
ACCESS_LOG_ATOMS = ("h", "l", "t", "m", "H", "s", "b", "B", "T", "D", "M", "L", "p")
UNMATCHED_PATH = "<unmatched>"
INVALID_REQUEST_PREFIX = "Invalid request from ip="  # gunicorn's error-log lines that quote what a client sent
REQUEST_ERROR_PREFIX = "Error handling request"


def bind_address(host: str, port: int) -> str:
    """gunicorn's bind string; IPv6 literals need brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def request_budget_s() -> float:
    """The app's per-request time budget, as the workers will read it ($LEUKOSTAGE_REQUEST_BUDGET_S or the default)."""
    return float(os.environ.get("LEUKOSTAGE_REQUEST_BUDGET_S", REQUEST_BUDGET_S))


def worker_timeout_s(budget_s: float | None = None) -> int:
    """gunicorn's worker timeout: the request budget plus one worst-case step, so the app answers first."""
    return int(round((request_budget_s() if budget_s is None else budget_s) + WORST_STEP_S))


def access_log_target(value: str | None) -> str | None:
    """gunicorn's ``accesslog`` for a ``$LEUKOSTAGE_ACCESS_LOG`` / ``--access-log`` value: None (off) for unset, empty,
    0, false, no, off; "-" (stdout) for 1, true, yes, on, -; any other value is a file path."""
    if value is None or value.strip().lower() in ("", "0", "false", "no", "off"):
        return None
    return "-" if value.strip().lower() in ("1", "true", "yes", "on", "-") else value


def loggable_path(url_map, method: str, path: str, status: int) -> str:
    """The request path as the access log may show it: a path of one of the app's routes with only numeric
    arguments (case and image ids) as it is; a static file as it is when it was served; anything else the client
    could have typed (an unknown path, a missing file name) as the route's pattern or ``UNMATCHED_PATH``."""
    from werkzeug.exceptions import MethodNotAllowed, NotFound
    from werkzeug.routing import RequestRedirect

    if url_map is None:
        return UNMATCHED_PATH
    adapter = url_map.bind("localhost")
    try:
        try:
            rule, args = adapter.match(path, method=method, return_rule=True)
        except MethodNotAllowed as exc:  # a route's path with another method: match it with one it allows
            rule, args = adapter.match(path, method=sorted(exc.valid_methods or ["GET"])[0], return_rule=True)
    except RequestRedirect:  # a route's path without its trailing slash
        return path
    except (NotFound, MethodNotAllowed):
        return UNMATCHED_PATH
    if all(isinstance(v, int) for v in args.values()) or status < 400:
        return path
    return rule.rule


class AccessLogger(GunicornLogger):
    """gunicorn's logger with an access log that holds no query string and no patient data (see the module doc).

    gunicorn's error log quotes a malformed request line ("Invalid request from ip=...: Invalid HTTP request line:
    'GET /cases?q=...'") and names the URI of a request that failed outside the app: those quotes and URIs are
    replaced too.
    """

    url_map = None  # the app's routes, set in each worker by GunicornApp.load

    def warning(self, msg, *args, **kwargs) -> None:
        if isinstance(msg, str) and msg.startswith(INVALID_REQUEST_PREFIX):
            msg = re.sub(r"'.*'", "'<not logged>'", msg % args if args else msg, flags=re.DOTALL)
            args = ()
        super().warning(msg, *args, **kwargs)

    def exception(self, msg, *args, **kwargs) -> None:
        if isinstance(msg, str) and msg.startswith(REQUEST_ERROR_PREFIX) and args:
            method = str(args[0]) if len(args) > 1 else "GET"
            path = loggable_path(self.url_map, method, urlsplit(str(args[-1])).path or "/", 500)
            msg, args = f"{REQUEST_ERROR_PREFIX} %s %s", (method, path)
        super().exception(msg, *args, **kwargs)

    def atoms(self, resp, req, environ, request_time) -> dict:
        every = super().atoms(resp, req, environ, request_time)
        method = environ.get("REQUEST_METHOD", "-")
        status = int(str(every.get("s", "0")).split()[0] or 0)
        path = loggable_path(self.url_map, method, environ.get("PATH_INFO") or "/", status)
        protocol = environ.get("SERVER_PROTOCOL", "-")
        return {**{k: every[k] for k in ACCESS_LOG_ATOMS if k in every}, "U": path, "r": f"{method} {path} {protocol}"}


def debug_request_handler(url_map):
    """Werkzeug's development server logs each request line, query string included; this handler logs what the
    gunicorn access log would (``--debug`` only)."""
    from werkzeug.serving import WSGIRequestHandler

    class SafeRequestHandler(WSGIRequestHandler):
        def log_request(self, code="-", size="-") -> None:
            status = int(getattr(code, "value", code)) if str(getattr(code, "value", code)).isdigit() else 0
            path = loggable_path(url_map, self.command or "-", unquote(urlsplit(self.path).path), status)
            self.log("info", '"%s %s %s" %s %s', self.command, path, self.request_version, status or code, size)

    return SafeRequestHandler


def gunicorn_options(host: str, port: int, workers: int, access_log: str | None = None) -> dict:
    """The gunicorn settings ``serve`` uses (a dict, so tests can check them without starting a server).

    Args:
        access_log: gunicorn's ``accesslog`` ("-" for stdout, a file path), None for no access log.
    """
    return {
        "bind": bind_address(host, port),
        "workers": workers,
        # sync: CPU-bound requests one at a time per worker, the rest wait in the backlog; JSON errors (see below)
        "worker_class": f"{__name__}.JsonErrorWorker",
        "preload_app": False,  # load the model in each worker, after the fork
        "timeout": worker_timeout_s(),
        "graceful_timeout": GRACEFUL_TIMEOUT_S,
        "errorlog": "-",
        "loglevel": "info",
        "logger_class": f"{__name__}.AccessLogger",
        "accesslog": access_log,
        "access_log_format": ACCESS_LOG_FORMAT,
        "proc_name": "leukostage",
        "control_socket_disable": True,  # gunicorn >= 27: no shared ~/.gunicorn/gunicorn.ctl between instances
    }


OPTIONAL_SETTINGS = {"control_socket_disable"}  # skipped where the installed gunicorn predates them


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own error answers (a worker stopped mid-request, a malformed request line) in the app's shape:
    JSON ``{"error": {"code", "message"}}`` with the same security headers, instead of gunicorn's HTML page."""
    from .responses import error_document

    body, headers = error_document(status_int, reason, mesg)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers)
    raw = f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n{head}\r\n"
    gunicorn_util.write_nonblock(sock, raw.encode("latin1") + body)


class JsonErrorWorker(SyncWorker):
    """gunicorn's sync worker, answering its own errors as JSON (see :func:`write_json_error`).

    When the master's timeout aborts a worker in the middle of a request (SIGABRT), the request gets a 503
    ``worker_timeout`` rather than an HTML 500; any other failure outside the app a 500 ``worker_failed``.
    """

    def init_process(self) -> None:
        gunicorn_util.write_error = write_json_error  # every error page this worker writes
        super().init_process()

    def handle_error(self, req, client, addr, exc) -> None:
        if isinstance(exc, SystemExit) and not self.alive:  # handle_abort: the master's timeout stopped us
            self.log.error("request stopped by the worker timeout (%s s)", self.cfg.timeout)
            try:
                write_json_error(client, 503, "Service Unavailable", "worker_timeout")
            except OSError:
                pass
            return
        super().handle_error(req, client, addr, exc)


class GunicornApp(BaseApplication):
    """gunicorn run from Python, so ``leukostage serve`` needs no shell command or config file."""

    def __init__(self, options: dict):
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings or key not in OPTIONAL_SETTINGS:
                self.cfg.set(key, value)
        extra = os.environ.get("GUNICORN_CMD_ARGS")
        if extra:
            parsed = self.cfg.parser().parse_args(shlex.split(extra))
            for key, value in vars(parsed).items():
                if value is not None and key != "args":
                    self.cfg.set(key.lower(), value)

    def load(self):
        """Called in each worker after the fork: size OpenCV's thread pool, then build the app (loading the model
        with $LEUKOSTAGE_ORT_THREADS threads)."""
        from . import create_app

        limit_opencv_threads(int(os.environ["LEUKOSTAGE_ORT_THREADS"]))
        app = create_app()
        AccessLogger.url_map = app.url_map
        return app


class StartupError(ValueError):
    """What stops ``serve`` before gunicorn starts, in one line: what is wrong and what to do."""


def metrics_on() -> bool:
    """Whether $LEUKOSTAGE_METRICS turns ``/metrics`` on (as ``create_app`` will read it in each worker)."""
    from . import as_flag

    return as_flag(os.environ.get("LEUKOSTAGE_METRICS", ""))


def metrics_directory() -> tuple[Path, bool]:
    """The directory the workers' metrics files share (prometheus_client's multiprocess mode), emptied: the
    operator's $PROMETHEUS_MULTIPROC_DIR, or a new temporary one; returns it and whether ``serve`` made it.
    Set in the environment before any worker starts (prometheus_client reads it when first imported)."""
    from .metrics import MULTIPROC_ENV

    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # counts of an earlier run would be added to this one's
            stale.unlink()
        return path, False
    path = Path(tempfile.mkdtemp(prefix="leukostage-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return path, True


def metrics_child_exit(server, worker) -> None:
    """gunicorn hook in the master: a worker that ended keeps its counters but leaves the live gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def check_secret() -> None:
    """Raises: StartupError when $LEUKOSTAGE_SECRET_KEY is set but shorter than 32 bytes (one line, before the
    workers start, instead of a traceback from each)."""
    from ..cases.config import SECRET_KEY_ENV, check_secret_key

    if os.environ.get(SECRET_KEY_ENV):
        try:
            check_secret_key(os.environ[SECRET_KEY_ENV])
        except ValueError as exc:
            raise StartupError(str(exc)) from None


def check_model(model_path: Path) -> None:
    """Load the model and its card once (:meth:`Predictor.load`, the one check) before any worker forks: a missing
    card or a corrupt file is then one clear line, not a traceback from every worker.

    The load runs in a forked child that ends with ``os._exit``, so ONNX Runtime is never initialised in the master.
    Its import alone starts a thread, and a worker forked from a process that holds ONNX Runtime's thread state
    cannot tear it down: at interpreter exit every worker that had served aborted ("terminate called after throwing
    an instance of 'std::system_error'", "Worker ... was sent SIGABRT") or hung until gunicorn killed it.

    Raises:
        StartupError: the model or its card is missing, unreadable, not ONNX, or made for other classes.
    """
    message = _in_child(_load_model, model_path)
    if message:
        raise StartupError(message)


def _load_model(model_path: Path) -> str | None:
    """What is wrong with loading ``model_path`` (one line), or None (one ONNX Runtime thread, no inference)."""
    from ..predict import Predictor

    try:
        Predictor.load(model_path, threads=1)
    except (OSError, ValueError) as exc:  # missing files, a file ONNX Runtime refuses, a card serving cannot use
        message = str(exc).splitlines()[0]
        return message if str(model_path) in message else f"model {model_path}: {message}"
    return None


def _in_child(check, *args) -> str | None:
    """Run ``check(*args)`` (which returns a problem or None) in a forked child and return its answer. The child ends
    with ``os._exit``: no interpreter teardown, no native destructors, nothing of what it loaded left in this
    process. A child that does not answer within ``MODEL_CHECK_TIMEOUT_S`` is stopped and reported."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without tearing anything down
        status = 1
        try:
            os.close(read_fd)
            problem = check(*args)
            os.write(write_fd, (problem or "").encode("utf-8", "replace"))
            status = 0
        except BaseException as exc:  # noqa: BLE001 - the master must get one line whatever happened here
            os.write(write_fd, f"checking the model failed ({type(exc).__name__}: {exc})".encode("utf-8", "replace"))
        finally:
            os._exit(status)
    os.close(write_fd)
    answer, deadline = b"", time.monotonic() + MODEL_CHECK_TIMEOUT_S
    try:
        while True:
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return f"loading the model did not finish within {MODEL_CHECK_TIMEOUT_S} s; check the model file"
            data = os.read(read_fd, 65536)
            if not data:
                break
            answer += data
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if not answer and code != 0:
        return f"checking the model failed (the checking process ended with status {code})"
    return answer.decode("utf-8", "replace") or None


def check_port(host: str, port: int) -> None:
    """Bind and release the address as gunicorn will (SO_REUSEADDR), so a port in use is one clear line.

    Raises:
        StartupError: the port is in use, needs privileges, or the host is not an address of this machine.
    """
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host.strip("[]"), port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {port} on {host} is already in use (another server, perhaps another "
                f"`leukostage serve`); stop it, or pass --port with a free port"
            ) from None
        if exc.errno == errno.EACCES:
            raise StartupError(f"port {port} needs administrator rights; pass --port 1024 or above") from None
        raise StartupError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass --host with an address "
            "of this machine, e.g. 127.0.0.1"
        ) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int | None = None,
    model: str | None = None,
    debug: bool = False,
    access_log: str | None = None,
) -> int:
    """Serve the page and the API until interrupted.

    Args:
        workers: gunicorn worker processes (default: the number of cores).
        model: ONNX model path (default: $LEUKOSTAGE_MODEL, else the model shipped in the package); passed to the
            workers in $LEUKOSTAGE_MODEL.
        debug: Flask's development server with the interactive debugger; only on a loopback address.
        access_log: "-" (stdout) or a file for the access log (see :func:`access_log_target`); default
            ``$LEUKOSTAGE_ACCESS_LOG``, else none. The development server always logs requests, in the same form.

    Raises:
        ValueError: ``workers`` below 1, or ``debug`` on an address other hosts can reach.
        StartupError: (a ValueError) the model, its card or the port is not usable (see :func:`check_model`,
            :func:`check_port`); checked before gunicorn starts, so the message is one line.
    """
    from ..predict import default_model_path

    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if debug and not _is_loopback(host):
        raise ValueError(f"--debug runs Werkzeug's interactive debugger; bind it to 127.0.0.1, not {host}")
    model_path = Path(model) if model else default_model_path()
    check_secret()
    check_model(model_path)
    if os.environ.get("WERKZEUG_RUN_MAIN") != "true":  # --debug's reloader child: the parent holds the port already
        check_port(host, port)
    os.environ["LEUKOSTAGE_MODEL"] = str(model_path.resolve())  # read by create_app in each worker

    if debug:
        from . import create_app

        app = create_app()
        app.run(host=host, port=port, debug=True, request_handler=debug_request_handler(app.url_map))
        return 0

    workers = workers or cpu_count()
    # An operator's explicit $LEUKOSTAGE_ORT_THREADS wins; the workers read it in create_app.
    os.environ.setdefault("LEUKOSTAGE_ORT_THREADS", str(threads_per_worker(workers)))
    target = access_log if access_log is not None else access_log_target(os.environ.get(ACCESS_LOG_ENV))
    options = gunicorn_options(host, port, workers, access_log=target)
    made = None
    if metrics_on():
        directory, created = metrics_directory()
        made = directory if created else None
        options["child_exit"] = metrics_child_exit
    master = os.getpid()
    try:
        GunicornApp(options).run()
    finally:
        # a worker leaves through this frame too (gunicorn forks inside run() and exits with sys.exit): only the
        # master, at the very end, removes the directory the workers still write to
        if made is not None and os.getpid() == master:
            shutil.rmtree(made, ignore_errors=True)
    return 0
