"""Command line verbs for cases: ``db upgrade|check|grant``, ``users add|list|set|token``, ``evaluate-cases``; and
the guard that keeps ``serve`` from starting on an unmigrated database (a new instance's default SQLite file is
created). A verb group of the ``cli`` package (``register``). ``users`` calls the same functions as the admin's Users
page (``cases.accounts``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from ..training.data import default_data_dir

Command = Callable[[argparse.Namespace], int]


def _add_db(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "db",
        help="the case database: apply migrations, check stored images against rows",
        description="The case database ($LEUKOSTAGE_DATABASE_URL, default a SQLite file in the "
        "instance folder): `db upgrade` applies every pending migration (serve creates the default SQLite "
        "database on a new instance, and refuses any other database that is not migrated); `db check` compares "
        "the image store with the rows; `db grant ROLE` (PostgreSQL, run as the schema's owner) lets the app's "
        "own role use the tables without altering or emptying the audit trail.",
    )
    verbs = p.add_subparsers(dest="db_command", required=True)
    verbs.add_parser("upgrade", help="apply every pending migration (creates the SQLite file on first use)")
    c = verbs.add_parser(
        "check", help="find stored image files without a row (and remove them) and rows whose file is missing"
    )
    c.add_argument("--dry-run", action="store_true", help="report only; remove nothing")
    c.add_argument(
        "--min-age",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="remove only orphan files older than this (a younger one may be an upload in flight)",
    )
    g = verbs.add_parser(
        "grant",
        help="PostgreSQL: give the app's role rows to read and write, but no UPDATE, DELETE or TRUNCATE on the "
        "audit trail (run as the owner, after each upgrade)",
    )
    g.add_argument("role", help="the role the app connects as (CREATE ROLE ... LOGIN first); not the owner")


def cmd_db(args: argparse.Namespace) -> int:
    from ..cases import db
    from ..cases.config import database_url, redacted, storage_dir

    if args.db_command == "upgrade":
        before, after = db.upgrade()
        state = "already at" if before == after else f"upgraded from {before or 'an empty database'} to"
        print(f"case database {redacted(database_url())}: {state} revision {after}")
        return 0
    if args.db_command == "grant":
        for statement in db.grant_app_role(args.role):
            print(statement + ";")
        print(f"role {args.role} may now serve {redacted(database_url())}: connect the app as {args.role}")
        return 0
    from ..cases.service import check_storage
    from ..cases.store import open_store

    db.require_current()
    store = open_store(database_url(), storage_dir())
    with db.session_scope() as session:
        report = check_storage(session, store, remove=not args.dry_run, min_age_s=args.min_age)
    print(json.dumps({**report, "storage": store.describe()}, indent=2))
    problems = len(report["orphan_files"]) - len(report["removed"]) + len(report["rows_without_file"])
    return 1 if problems else 0


def _add_users(sub: argparse._SubParsersAction) -> None:
    from ..cases.models import ROLES

    p = sub.add_parser(
        "users",
        help="users of the case workflow: add, list, change (role, disable, password), issue or revoke API tokens",
        description="Users of the case workflow and their roles (technician: creates cases and "
        "uploads; reviewer: overrides and signs off; admin: users, also on the Users page). Passwords and tokens "
        "are stored hashed only; every change is recorded in the audit trail.",
    )
    verbs = p.add_subparsers(dest="users_command", required=True)
    a = verbs.add_parser("add", help="add a user (the password is read from stdin)")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=ROLES)
    a.add_argument(
        "--password-stdin",
        action="store_true",
        required=True,
        help="read the password from the first line of stdin (never from the command line)",
    )
    verbs.add_parser("list", help="every account: name, role, active or disabled")
    c = verbs.add_parser("set", help="change an account: its role, disable or enable it, or a new password (stdin)")
    c.add_argument("name")
    c.add_argument("--role", choices=ROLES)
    state = c.add_mutually_exclusive_group()
    state.add_argument(
        "--disable", action="store_true", help="refuse its sign-ins and tokens, end its sessions (kept, not deleted)"
    )
    state.add_argument("--enable", action="store_true")
    c.add_argument("--password-stdin", action="store_true", help="read a new password from the first line of stdin")
    t = verbs.add_parser(
        "token",
        help="print a new bearer token, alone on the last line (only its hash is stored), and its expiry on stderr",
    )
    t.add_argument("name")
    t.add_argument(
        "--days",
        type=int,
        default=None,
        help="days the token is valid (default: $LEUKOSTAGE_TOKEN_DAYS, else 90)",
    )
    t.add_argument(
        "--revoke", action="store_true", help="revoke every token of the user instead (and end their sessions)"
    )


def cmd_users(args: argparse.Namespace) -> int:
    from ..cases import accounts, db, users
    from ..cases.service import ServiceError, iso

    db.require_current()
    try:
        with db.session_scope() as session:
            if args.users_command == "add":
                password = sys.stdin.readline().rstrip("\r\n")
                user = accounts.create_user(
                    session, None, {"username": args.name, "role": args.role, "password": password}
                )
                print(f"added {user['role']} {user['username']}")
                return 0
            if args.users_command == "list":
                for user in accounts.list_users(session, None):
                    print(f"{user['username']}\t{user['role']}\t{'disabled' if user['disabled'] else 'active'}")
                return 0
            if args.users_command == "set":
                return _set_user(session, args)
    except ServiceError as exc:
        raise ValueError(exc.message) from None  # one line on stderr, exit status 2 (cli.main)
    with db.session_scope() as session:
        user = users.get_user(session, args.name)
        if args.revoke:
            print(f"revoked {users.revoke_tokens(session, user)} token(s) of {user.username}; their sessions ended")
            return 0
        token = users.issue_token(session, user, args.days)
        expires = users.token_expiry(session, token)
    print(
        f"bearer token for {args.name}, valid until {iso(expires)} (shown once; send it as "
        "'Authorization: Bearer <token>'):",
        file=sys.stderr,
    )
    print(token)
    return 0


def _set_user(session, args: argparse.Namespace) -> int:
    from ..cases import accounts

    changes: dict = {}
    if args.role:
        changes["role"] = args.role
    if args.disable or args.enable:
        changes["disabled"] = bool(args.disable)
    if args.password_stdin:
        changes["password"] = sys.stdin.readline().rstrip("\r\n")
    if not changes:
        raise ValueError("nothing to change: give --role ROLE, --disable, --enable or --password-stdin")
    user = accounts.update_user(session, None, args.name, changes)
    state = "disabled" if user["disabled"] else "active"
    print(f"{user['username']}: {user['role']}, {state}" + (", password reset" if "password" in changes else ""))
    return 0


def _add_evaluate_cases(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-cases",
        help="choose the case-call rule on the blocked split's validation part "
        "and score it on its test part (pseudo-cases of 10 consecutive files); writes "
        "reports/cases/metrics.json + report.md and the package's case_rule.json",
        description="Choose the case-call rule on the blocked split's validation part (pseudo-cases of "
        "10 consecutive file numbers of one class) and score it on the test part; writes "
        "reports/cases/metrics.json + report.md and the package's case_rule.json.",
    )
    p.add_argument("--data", default=str(default_data_dir()), help="dataset folder (default: $LEUKOSTAGE_DATA)")
    p.add_argument("--model", default=None, help="ONNX model (default: the model shipped in the package)")
    p.add_argument("--seed", type=int, default=None, help="split seed (default: the model's training seed)")
    p.add_argument("--out", default="reports/cases", help="report folder")
    p.add_argument(
        "--rule-out",
        default=None,
        help="where to write the chosen rule (default: the package's leukostage/cases/case_rule.json)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_evaluate_cases(args: argparse.Namespace) -> int:
    from ..training.evaluate_cases import run

    metrics = run(
        args.data, model=args.model, seed=args.seed, out=args.out, rule_out=args.rule_out, progress=not args.quiet
    )
    print(json.dumps({k: metrics[k] for k in ("rule", "validation", "test")}, indent=2))
    return 0


def guard_serve(serve: Command) -> Command:
    """``serve`` that first checks the case database is migrated (one line naming `leukostage db upgrade`).

    One exception: on a fresh install with the default database (no ``LEUKOSTAGE_DATABASE_URL``, no SQLite file in
    the instance folder yet) there is nothing to migrate, so the empty database is created, said in one line, and
    the app starts: `pip install leukostage && leukostage serve` works. A configured or existing database that is
    behind is never changed by ``serve``.
    """

    def guarded(args: argparse.Namespace) -> int:
        from ..cases import db
        from ..cases.config import DATABASE_URL_ENV, SQLITE_NAME, instance_dir
        from ..cases.db import DatabaseNotReady, dispose_all, require_current

        default_file = instance_dir() / SQLITE_NAME
        if not os.environ.get(DATABASE_URL_ENV) and not default_file.exists():
            default_file.parent.mkdir(parents=True, exist_ok=True)
            _, revision = db.upgrade()
            print(
                f"leukostage serve: created a new case database at {default_file} (revision {revision}); after "
                f"an update, `leukostage db upgrade` migrates it",
                file=sys.stderr,
            )
        try:
            require_current()
        except DatabaseNotReady as exc:
            print(f"leukostage serve: error: {exc}", file=sys.stderr)
            return 2
        dispose_all()  # no open connection is inherited by the workers
        return serve(args)

    guarded.guarded = True  # type: ignore[attr-defined]
    return guarded


def register(sub: argparse._SubParsersAction) -> None:
    """Add the case verbs, and guard ``serve`` (registered earlier by the serving group) with the database check."""
    _add_db(sub)
    _add_users(sub)
    _add_evaluate_cases(sub)
    sub.choices["db"].set_defaults(func=_friendly(cmd_db))
    sub.choices["users"].set_defaults(func=_friendly(cmd_users))
    sub.choices["evaluate-cases"].set_defaults(func=cmd_evaluate_cases)
    serve = sub.choices.get("serve")
    if serve is not None and not getattr(serve.get_default("func"), "guarded", False):
        serve.set_defaults(func=guard_serve(serve.get_default("func")))


def _friendly(command: Command) -> Command:
    """Case errors as one line on stderr, exit status 2 (like cli.main does for ValueError)."""

    def run(args: argparse.Namespace) -> int:
        from sqlalchemy.exc import SQLAlchemyError

        from ..cases.db import DatabaseNotReady

        try:
            return command(args)
        except DatabaseNotReady as exc:
            print(f"leukostage {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except SQLAlchemyError as exc:
            print(
                f"leukostage {args.command}: database error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                file=sys.stderr,
            )
            return 2

    return run
