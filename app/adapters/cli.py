"""`teller adapters import|list|activate|remove|merge`.

With a server running (its token file `data_dir/admin.token` exists and its URL answers),
changes go through the server's admin API, so it loads and unloads adapters at once. With
none running, the command acts on the store directly; a server started later reads it.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import httpx

from app.adapters.admin_token import read_token, token_path
from app.adapters.errors import AdapterError
from app.adapters.registry import parse_ref
from app.adapters.service import (
    LOCAL_ADMIN,
    activate_in_store,
    import_into_store,
    listing,
    record_merge,
    registry_for,
    remove_from_store,
)
from app.cli_common import EXIT_BAD_INPUT, CliError, OneLineParser, load_settings, open_session
from app.config import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="teller adapters", description="Manage the adapter store.")
    parser.add_argument("--url", default="", help="server URL (default http://HOST:PORT)")
    commands = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    imp = commands.add_parser("import", help="check and store a package folder or zip")
    imp.add_argument("path", type=Path)
    imp.add_argument("--name", default="", help="store under this name (default: manifest's)")
    imp.add_argument(
        "--allow-base-mismatch",
        action="store_true",
        help="accept a package whose manifest names another base model (shapes still checked)",
    )
    listing = commands.add_parser("list", help="stored versions, the default, what is loaded")
    listing.add_argument("--json", action="store_true")
    activate = commands.add_parser("activate", help="make NAME[@VERSION] the default")
    activate.add_argument("ref")
    remove = commands.add_parser("remove", help="delete NAME@VERSION from the store")
    remove.add_argument("ref")
    merge = commands.add_parser("merge", help="write base + adapter as one bf16 checkpoint")
    merge.add_argument("ref")
    merge.add_argument("--output", type=Path, required=True)
    merge.add_argument("--base-model", default="", help="default: the served base model")
    return parser


class ServerClient:
    """The running server's admin API, authenticated with the local admin token."""

    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=600
        )

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.http.request(method, "/admin/api/adapters" + path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise AdapterError(str(detail).strip())
        return response.json()


def find_server(settings: Settings, url: str) -> ServerClient | None:
    """The running server's API, or None when no server of this data dir is running.

    Raises:
        AdapterError: a server answers but refuses this data dir's token.
    """
    token = read_token(settings.data_dir)
    if not token:
        return None
    client = ServerClient(url or f"http://{settings.host}:{settings.port}", token)
    try:
        client.call("GET", "")
    except httpx.TransportError:
        return None  # a token left by a server that is gone
    except AdapterError as exc:
        raise AdapterError(
            f"the server at {client.http.base_url} refused the token in "
            f"{token_path(settings.data_dir)}: {exc}"
        ) from None
    return client


def zip_package(path: Path) -> bytes:
    """A folder as an in-memory zip (the API takes archives); a zip file as it is."""
    if path.is_file():
        return path.read_bytes()
    if not path.is_dir():
        raise AdapterError(f"{path} does not exist")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for entry in sorted(path.iterdir()):
            if entry.is_symlink() or not entry.is_file():
                raise AdapterError(f"{entry.name}: a package holds only plain files")
            bundle.write(entry, entry.name)
    return buffer.getvalue()


def _print_listing(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    if not data["adapters"]:
        sys.stdout.write("no adapters in the store\n")
    for item in data["adapters"]:
        flags = [
            flag
            for flag, on in (
                ("default", item["ref"] == data["default"]),
                ("current", data["current"].get(item["name"]) == item["version"]),
                ("loaded", item["ref"] in data.get("loaded", [])),
            )
            if on
        ]
        sys.stdout.write(
            f"{item['ref']:<24} sha256 {item['sha256'][:12]}  base {item['base_model']}  "
            f"created {item['created_at']}  {' '.join(flags)}\n".rstrip()
            + "\n"
        )
    sys.stdout.write(f"default: {data['default'] or 'base model (no adapter)'}\n")


def run(args: argparse.Namespace, settings: Settings) -> str:
    """Carry out one action; returns the line to print."""
    registry = registry_for(settings)
    if args.action == "merge":
        from app.adapters.merge import merge_adapter

        merged = registry.get(*parse_ref(args.ref))
        base = args.base_model or settings.resolved_base_model
        output = merge_adapter(merged, base, args.output)
        with open_session(settings) as session:
            record_merge(session=session, version=merged, output=output)
        return f"merged {merged.ref} into {base}: {output} (bfloat16 safetensors)"
    server = find_server(settings, args.url)
    if args.action == "list":
        data = server.call("GET", "") if server else listing(registry)
        _print_listing(data, args.json)
        return ""
    if args.action == "import":
        if server:
            data = server.call(
                "POST",
                "",
                files={"package": (args.path.name or "package", zip_package(args.path))},
                data={"name": args.name, "allow_base_mismatch": str(args.allow_base_mismatch)},
            )
            return f"stored {data['ref']} (sha256 {data['sha256'][:12]}) via the running server"
        with open_session(settings) as session:
            stored = import_into_store(
                registry,
                args.path,
                session=session,
                actor=LOCAL_ADMIN,
                name=args.name or None,
                allow_base_mismatch=args.allow_base_mismatch,
            )
        return f"stored {stored.ref} (sha256 {stored.sha256[:12]})"
    if args.action == "activate":
        if server:
            data = server.call("POST", "/activate", json={"ref": args.ref})
            return f"{data['action']}: {data['ref']} is the default (loaded by the server)"
        with open_session(settings) as session:
            target, action = activate_in_store(
                registry, *parse_ref(args.ref), session=session, actor=LOCAL_ADMIN
            )
        return f"{action}: {target.ref} is the default"
    name, version = parse_ref(args.ref)
    if version is None:
        raise AdapterError(f"say which version to remove: {name}@VERSION")
    if server:
        data = server.call("POST", "/remove", json={"ref": args.ref})
        return f"removed {data['ref']}"
    with open_session(settings) as session:
        removed = remove_from_store(registry, name, version, session=session, actor=LOCAL_ADMIN)
    return f"removed {removed.ref}"


def adapters_main(argv: list[str]) -> int:
    """Entry point of `teller adapters`; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        line = run(args, load_settings())
    except (AdapterError, CliError, httpx.HTTPError) as exc:
        sys.stderr.write(f"teller adapters: error: {exc}\n")
        return EXIT_BAD_INPUT
    except ValueError as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        sys.stderr.write(f"teller adapters: error: {reason}\n")
        return EXIT_BAD_INPUT
    if line:
        sys.stdout.write(line + "\n")
    return 0
