"""Checks on DOCX/XLSX packages (zip files) before a library opens them.

A zip bomb is refused from the sizes its directory declares, before anything is unpacked;
the unpacking that follows reads through a bounded stream, so a lying directory does not
help. External references (a template, image or workbook fetched from elsewhere when the
file opens) and XML DTDs (entity expansion) are refused outright: nothing in a document may
reach outside it. Hyperlinks are text and stay.
"""

from __future__ import annotations

import io
import re
import zipfile

from app.knowledge.parsers.model import DocumentRefused, Limits

MAX_MEMBERS = 10_000
SUSPICIOUS_RATIO = 200
TARGET_MODE_EXTERNAL = re.compile(rb'TargetMode\s*=\s*["\']External["\']', re.I)
RELATIONSHIP = re.compile(rb"<Relationship\b[^>]*>", re.I)
TYPE = re.compile(rb'Type\s*=\s*["\']([^"\']+)["\']', re.I)
TARGET = re.compile(rb'Target\s*=\s*["\']([^"\']*)["\']', re.I)


def open_package(data: bytes, *, limits: Limits, kind: str) -> zipfile.ZipFile:
    """The zip, checked: sizes, member count, external references, DTDs.

    Raises:
        DocumentRefused: with the reason in words.
    """
    try:
        package = zipfile.ZipFile(io.BytesIO(data))
        members = package.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DocumentRefused(
            f"not a readable {kind} file (a damaged zip package: {exc})"
        ) from None
    if len(members) > MAX_MEMBERS:
        raise DocumentRefused(f"the {kind} package holds {len(members):,} parts; refused")
    expanded = sum(member.file_size for member in members)
    if expanded > limits.max_expanded_bytes:
        raise DocumentRefused(
            f"the {kind} file would unpack to {expanded / 2**20:,.0f} MiB from "
            f"{len(data) / 2**20:,.1f} MiB (a zip bomb?); the limit is "
            f"{limits.max_expanded_bytes / 2**20:,.0f} MiB (TELLER_KNOWLEDGE_MAX_EXPANDED_BYTES)"
        )
    for member in members:
        if member.compress_size and member.file_size / member.compress_size > SUSPICIOUS_RATIO:
            if member.file_size > 10 << 20:
                ratio = member.file_size // member.compress_size
                raise DocumentRefused(
                    f"the {kind} part {member.filename} is compressed {ratio:,} to 1 "
                    "(a zip bomb?); refused"
                )
    for member in members:
        name = member.filename
        if name.startswith(("xl/externalLinks/", "word/externalLinks/")):
            raise DocumentRefused(f"the {kind} file links to external workbooks; refused")
        if not name.endswith((".xml", ".rels")):
            continue
        head = read_member(package, member, limits)[:4096]
        if b"<!DOCTYPE" in head.upper() or b"<!ENTITY" in head.upper():
            raise DocumentRefused(f"the {kind} part {name} declares a DTD (XML entities); refused")
        if name.endswith(".rels"):
            _check_relationships(read_member(package, member, limits), name, kind)
    return package


def _check_relationships(xml: bytes, name: str, kind: str) -> None:
    for relationship in RELATIONSHIP.findall(xml):
        if not TARGET_MODE_EXTERNAL.search(relationship):
            continue
        kind_match = TYPE.search(relationship)
        rel_type = kind_match.group(1).decode(errors="replace") if kind_match else ""
        if rel_type.endswith("/hyperlink"):
            continue
        target_match = TARGET.search(relationship)
        target = target_match.group(1).decode(errors="replace")[:120] if target_match else ""
        what = rel_type.rsplit("/", 1)[-1] or "resource"
        raise DocumentRefused(
            f"the {kind} file refers to an external {what} ({target}); documents with "
            "external references are refused"
        )


def read_member(package: zipfile.ZipFile, member: zipfile.ZipInfo, limits: Limits) -> bytes:
    """A part's bytes, never more than the expansion limit whatever its header says."""
    with package.open(member) as stream:
        data = stream.read(limits.max_expanded_bytes + 1)
    if len(data) > limits.max_expanded_bytes:
        raise DocumentRefused(f"the part {member.filename} unpacks past the limit; refused")
    return data
