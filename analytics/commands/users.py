"""`python -m analytics users ACTION ...`: sign-in accounts and patient grants (analytics/auth.py)."""
from __future__ import annotations

import argparse
import getpass
import sys

from .. import auth, store
from ..permissions import ROLES
from . import EXIT_FAILED, EXIT_OK, print_json


def add_arguments(p) -> None:
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name, help_text):
        sp = actions.add_parser(name, help=help_text, description=help_text)
        # --db may also follow the action (`users add --db PATH ...`); SUPPRESS keeps an earlier one
        sp.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help="database file")
        return sp

    add = action("add", "add an account; the password is asked for (or read from stdin), never taken from argv")
    add.add_argument("user")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--clinician", metavar="HANDLE", default=None,
                     help="the clinician value their patients are filed under (default: the user name)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.add_argument("--oidc-only", action="store_true", help="no local password: signs in through the identity provider only")
    action("disable", "disable an account and end its sessions").add_argument("user")
    action("enable", "enable a disabled account").add_argument("user")
    listing = action("list", "list accounts (never their password hashes)")
    listing.add_argument("--json", action="store_true")
    reset = action("reset-password", "set a new password, clear lockout, end open sessions")
    reset.add_argument("user")
    reset.add_argument("--password-stdin", action="store_true")
    role = action("set-role", "change an account's role (ends its open sessions)")
    role.add_argument("user")
    role.add_argument("role", choices=ROLES)
    role.add_argument("--clinician", metavar="HANDLE", default=None)
    grant = action("grant", "let a user open one patient's record")
    grant.add_argument("user")
    grant.add_argument("patient")
    grant.add_argument("--reason", default="")
    revoke = action("revoke", "withdraw a patient grant")
    revoke.add_argument("user")
    revoke.add_argument("patient")
    action("demo-accounts", "create one account per role with random passwords (demo databases only)")
    link = action("link-oidc", "let an identity provider's account (issuer, subject) sign in as an existing account")
    link.add_argument("user")
    link.add_argument("--issuer", required=True, help="the provider's iss claim")
    link.add_argument("--subject", required=True, help="the person's sub claim at that provider")
    unlink = action("unlink-oidc", "remove a link made by link-oidc (ends the account's open sessions)")
    unlink.add_argument("--issuer", required=True)
    unlink.add_argument("--subject", required=True)
    glass = action("break-glass", "let an administrator take identifiable exports in the dashboard for a while (audited)")
    glass.add_argument("user")
    glass.add_argument("--reason", required=True, help="why identifiable data are needed (kept in the audit trail)")
    glass.add_argument("--hours", type=float, default=4, help="how long the grant lasts (default 4, at most 24)")
    action("end-break-glass", "end an administrator's break-glass grant now").add_argument("user")


def _read_password(args, prompt: str = "Password: ") -> str:
    if getattr(args, "password_stdin", False):
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    try:
        first = getpass.getpass(prompt)
        again = getpass.getpass("Again: ")
    except EOFError:  # no terminal and nothing on stdin (a script): say how to give one
        raise auth.UserError("no password was given: type it at the prompt, or pipe it with --password-stdin") from None
    if first != again:
        raise auth.UserError("the two passwords differ")
    return first


def _operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name in some containers
        return "cli"


def run(args) -> int:
    """`python -m analytics users ACTION ...`: exit 0 done, 2 refused (message on stderr)."""
    db = store.db_path(getattr(args, "db", None))
    actor = _operator()
    try:
        if args.action == "list":
            frame = auth.list_users(db)
            if args.json:
                print_json(frame.to_dict(orient="records"))
            elif frame.empty:
                print("no accounts yet: python -m analytics users add NAME --role ROLE")
            else:
                print(frame.to_string(index=False))
            return EXIT_OK
        if args.action == "demo-accounts":
            made = auth.create_demo_accounts(db)
            if not made:
                print("demo accounts already exist; `python -m analytics users reset-password NAME` sets a new password")
            else:
                print("Demo sign-in accounts (passwords are shown once; reset with `users reset-password`):")
                for name, role, password in made:
                    print(f"  {role:<10} user {name:<12} password {password}")
            return EXIT_OK
        if args.action == "add":
            password = None if args.oidc_only else _read_password(args)
            auth.create_user(db, args.user, args.role, password, clinician=args.clinician, actor=actor)
            print(f"users: added {auth.check_username(args.user)} ({args.role})")
        elif args.action == "disable":
            auth.disable_user(db, args.user, actor=actor)
            print(f"users: disabled {auth.check_username(args.user)}")
        elif args.action == "enable":
            auth.enable_user(db, args.user, actor=actor)
            print(f"users: enabled {auth.check_username(args.user)}")
        elif args.action == "reset-password":
            auth.reset_password(db, args.user, _read_password(args, "New password: "), actor=actor)
            print(f"users: new password set for {auth.check_username(args.user)}; their open sessions have ended")
        elif args.action == "set-role":
            auth.set_role(db, args.user, args.role, clinician=args.clinician, actor=actor)
            print(f"users: {auth.check_username(args.user)} is now {args.role}")
        elif args.action == "grant":
            auth.grant_patient(db, args.user, args.patient, actor=actor, reason=args.reason)
            print(f"users: {auth.check_username(args.user)} may open patient {args.patient}")
        elif args.action == "link-oidc":
            auth.link_identity(db, args.user, args.issuer, args.subject, actor=actor)
            print(f"users: {args.issuer} subject {args.subject} now signs in as {auth.check_username(args.user)}")
        elif args.action == "unlink-oidc":
            auth.unlink_identity(db, args.issuer, args.subject, actor=actor)
            print("users: link removed")
        elif args.action == "break-glass":
            expires = auth.grant_break_glass(db, args.user, args.reason, hours=args.hours, actor=actor)
            print(f"users: break-glass grant for {auth.check_username(args.user)} until {expires:%Y-%m-%d %H:%M} UTC")
        elif args.action == "end-break-glass":
            ended = auth.end_break_glass(db, args.user, actor=actor)
            print("users: break-glass grant ended" if ended else "users: no active break-glass grant")
        elif args.action == "revoke":
            auth.revoke_patient(db, args.user, args.patient, actor=actor)
            print("users: grant withdrawn")
    except (auth.AuthError, FileNotFoundError) as exc:  # busy and the rest: the wrapper (commands.run_command)
        print(f"users {args.action}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
