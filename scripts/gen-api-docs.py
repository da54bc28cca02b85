#!/usr/bin/env python3
"""Write docs/reference/api.md, the gRPC API reference, from the generated descriptors.

The structure (services, RPCs, messages, fields, enums) comes from the generated modules in
proto/python/src/chital/api/** (every ``*_pb2.py``, so a new service appears without touching this
script). The comments come from the .proto sources: protoc (grpc_tools, as scripts/genproto.sh runs
it) writes a descriptor set with ``--include_source_info``. That descriptor set, without its source
info, must equal the generated one, or the generated code is stale and the script fails.

    .venv/bin/python scripts/gen-api-docs.py            # write docs/reference/api.md
    .venv/bin/python scripts/gen-api-docs.py --check    # fail when it is stale (make lint)
    .venv/bin/python scripts/gen-api-docs.py --out FILE # write elsewhere
"""

from __future__ import annotations

import argparse
import difflib
import html
import importlib
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO / "proto"
GENERATED = REPO / "proto" / "python" / "src"
DEFAULT_OUT = REPO / "docs" / "reference" / "api.md"

FDP = descriptor_pb2.FieldDescriptorProto
# Field numbers of the descriptor messages, as used in SourceCodeInfo.Location.path.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM = 2, 3, 4
ENUM_VALUE = 2
SERVICE_METHOD = 2

SCALARS = {
    FDP.TYPE_DOUBLE: "double",
    FDP.TYPE_FLOAT: "float",
    FDP.TYPE_INT64: "int64",
    FDP.TYPE_UINT64: "uint64",
    FDP.TYPE_INT32: "int32",
    FDP.TYPE_FIXED64: "fixed64",
    FDP.TYPE_FIXED32: "fixed32",
    FDP.TYPE_BOOL: "bool",
    FDP.TYPE_STRING: "string",
    FDP.TYPE_BYTES: "bytes",
    FDP.TYPE_UINT32: "uint32",
    FDP.TYPE_SFIXED32: "sfixed32",
    FDP.TYPE_SFIXED64: "sfixed64",
    FDP.TYPE_SINT32: "sint32",
    FDP.TYPE_SINT64: "sint64",
}

Path_ = tuple[int, ...]

# The public services first, the controller's own channel to the agents last; others in between.
ORDER = {"container": 0, "host": 1, "admin": 2, "agent": 99}


def generated_files() -> list[descriptor_pb2.FileDescriptorProto]:
    """The FileDescriptorProto of every generated ``*_pb2`` module under chital/api, by proto path."""
    sys.path.insert(0, str(GENERATED))
    files = []
    for module_file in sorted((GENERATED / "chital" / "api").rglob("*_pb2.py")):
        name = ".".join(module_file.relative_to(GENERATED).with_suffix("").parts)
        module = importlib.import_module(name)
        fdp = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(fdp)
        files.append(fdp)
    return sorted(files, key=lambda f: (ORDER.get(f.package.split(".")[2], 50), f.package))


def source_files(names: Iterable[str]) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """The same files compiled by protoc from proto/, with their source info (comments)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "api.pb"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{PROTO_DIR}",
                "--include_source_info",
                f"--descriptor_set_out={out}",
                *names,
            ],
            check=True,
            cwd=REPO,
        )
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return {f.name: f for f in fds.file}


def check_fresh(
    generated: descriptor_pb2.FileDescriptorProto, source: descriptor_pb2.FileDescriptorProto
) -> None:
    bare = descriptor_pb2.FileDescriptorProto()
    bare.CopyFrom(source)
    bare.ClearField("source_code_info")
    # protoc fills in json_name in a descriptor set; the generated modules leave it out.
    stack = list(bare.message_type)
    while stack:
        msg = stack.pop()
        stack.extend(msg.nested_type)
        for field in msg.field:
            field.ClearField("json_name")
    if bare != generated:
        sys.exit(
            f"gen-api-docs: the generated code of {generated.name} differs from the .proto; "
            "run 'make protos' first"
        )


def comments(fdp: descriptor_pb2.FileDescriptorProto) -> dict[Path_, str]:
    """Leading (else trailing) comment of each element, by its location path."""
    out = {}
    for loc in fdp.source_code_info.location:
        text = loc.leading_comments.strip() or loc.trailing_comments.strip()
        if text:
            out[tuple(loc.path)] = " ".join(line.strip() for line in text.splitlines())
    return out


def text(s: str) -> str:
    """A comment as Markdown text: HTML and Markdown syntax characters taken literally."""
    s = html.escape(s, quote=False)
    for ch in "\\`*_[]|":
        s = s.replace(ch, "\\" + ch)
    return s


def anchor(full_name: str) -> str:
    return full_name.lstrip(".").replace(".", "-").lower()


class Renderer:
    def __init__(self, files: list[descriptor_pb2.FileDescriptorProto]) -> None:
        self.files = files
        self.maps: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.known: set[str] = set()
        for f in files:
            for msg, full in self._messages(f.message_type, "." + f.package):
                self.known.add(full)
                if msg.options.map_entry:
                    self.maps[full] = msg
                for enum in msg.enum_type:
                    self.known.add(f"{full}.{enum.name}")
            for enum in f.enum_type:
                self.known.add(f".{f.package}.{enum.name}")

    def _messages(
        self, messages: Iterable[descriptor_pb2.DescriptorProto], scope: str
    ) -> Iterator[tuple[descriptor_pb2.DescriptorProto, str]]:
        for msg in messages:
            full = f"{scope}.{msg.name}"
            yield msg, full
            yield from self._messages(msg.nested_type, full)

    def type_ref(self, type_name: str) -> str:
        """A message or enum name, linked when it is documented on this page."""
        short = type_name.lstrip(".")
        if type_name in self.known:
            return f"[`{short.rsplit('.', 1)[-1]}`](#{anchor(type_name)})"
        return f"`{short}`"

    def field_type(self, field: descriptor_pb2.FieldDescriptorProto) -> str:
        if field.type_name in self.maps:
            key, value = self.maps[field.type_name].field
            return f"map&lt;{self.field_type(key)}, {self.field_type(value)}&gt;"
        base = SCALARS.get(field.type)
        kind = f"`{base}`" if base else self.type_ref(field.type_name)
        if field.label == FDP.LABEL_REPEATED:
            return f"repeated {kind}"
        if field.proto3_optional:
            return f"optional {kind}"
        return kind

    def render(self, sources: dict[str, descriptor_pb2.FileDescriptorProto]) -> str:
        out = [
            "# API reference",
            "",
            "<!-- Generated by scripts/gen-api-docs.py from proto/ (make api-docs); do not edit. -->",
            "",
            "The gRPC API of chital, generated from the `.proto` files in `proto/chital/api/`. "
            "Clients call the controller's public services; the controller alone calls `AgentService` "
            "on each host. Every package is versioned (`v1`); a removed field's number is `reserved`.",
            "",
        ]
        out += ["| package | file | services |", "|---|---|---|"]
        for f in self.files:
            services = ", ".join(f"[`{s.name}`](#{anchor(f'{f.package}.{s.name}')})" for s in f.service)
            out.append(f"| `{f.package}` | `proto/{f.name}` | {services or '-'} |")
        out.append("")
        for f in self.files:
            out += self.render_file(f, comments(sources[f.name]))
        return "\n".join(out).rstrip() + "\n"

    def render_file(self, f: descriptor_pb2.FileDescriptorProto, doc: dict[Path_, str]) -> list[str]:
        out = [f"## {f.package}", "", f"Source: `proto/{f.name}`.", ""]
        for si, svc in enumerate(f.service):
            full = f"{f.package}.{svc.name}"
            out += [f"### {svc.name} {{#{anchor(full)}}}", ""]
            if c := doc.get((FILE_SERVICE, si)):
                out += [text(c), ""]
            out += ["| RPC | request → response, and what it does |", "|---|---|"]
            for mi, m in enumerate(svc.method):
                req = ("stream " if m.client_streaming else "") + self.type_ref(m.input_type)
                resp = ("stream " if m.server_streaming else "") + self.type_ref(m.output_type)
                desc = text(doc.get((FILE_SERVICE, si, SERVICE_METHOD, mi), ""))
                out.append(f"| **{m.name}** | {req} → {resp}<br>{desc} |")
            out.append("")
        for ei, enum in enumerate(f.enum_type):
            out += self.render_enum(enum, f".{f.package}", (FILE_ENUM, ei), doc)
        for mi, msg in enumerate(f.message_type):
            out += self.render_message(msg, f".{f.package}", (FILE_MESSAGE, mi), doc)
        return out

    def render_enum(
        self, enum: descriptor_pb2.EnumDescriptorProto, scope: str, path: Path_, doc: dict[Path_, str]
    ) -> list[str]:
        full = f"{scope}.{enum.name}"
        title = full.lstrip(".").split(".", 4)[-1]  # nested enums keep their message's name
        out = [f"#### enum {title} {{#{anchor(full)}}}", ""]
        if c := doc.get(path):
            out += [text(c), ""]
        out += ["| value | number | description |", "|---|---|---|"]
        for vi, value in enumerate(enum.value):
            desc = text(doc.get((*path, ENUM_VALUE, vi), ""))
            out.append(f"| `{value.name}` | {value.number} | {desc} |")
        return [*out, ""]

    def render_message(
        self, msg: descriptor_pb2.DescriptorProto, scope: str, path: Path_, doc: dict[Path_, str]
    ) -> list[str]:
        full = f"{scope}.{msg.name}"
        if msg.options.map_entry:
            return []
        title = full.lstrip(".").split(".", 4)[-1]
        out = [f"#### {title} {{#{anchor(full)}}}", ""]
        if c := doc.get(path):
            out += [text(c), ""]
        if msg.field:
            out += ["| field | number | type | description |", "|---|---|---|---|"]
            for fi, field in enumerate(msg.field):
                desc = text(doc.get((*path, MESSAGE_FIELD, fi), ""))
                out.append(f"| `{field.name}` | {field.number} | {self.field_type(field)} | {desc} |")
        else:
            out.append("No fields.")
        if msg.reserved_range or msg.reserved_name:
            spans = [
                str(r.start) if r.end == r.start + 1 else f"{r.start}-{r.end - 1}" for r in msg.reserved_range
            ]
            out += ["", "Reserved: " + ", ".join([*spans, *(f"`{n}`" for n in msg.reserved_name)]) + "."]
        out.append("")
        for ei, enum in enumerate(msg.enum_type):
            out += self.render_enum(enum, full, (*path, MESSAGE_ENUM, ei), doc)
        for ni, nested in enumerate(msg.nested_type):
            out += self.render_message(nested, full, (*path, MESSAGE_NESTED, ni), doc)
        return out


def build() -> str:
    generated = generated_files()
    if not generated:
        sys.exit(f"gen-api-docs: no generated *_pb2.py under {GENERATED / 'chital' / 'api'}")
    sources = source_files(f.name for f in generated)
    for f in generated:
        check_fresh(f, sources[f.name])
    return Renderer(generated).render(sources)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: docs/reference/api.md")
    parser.add_argument(
        "--check", action="store_true", help="fail when --out differs from what would be written"
    )
    args = parser.parse_args()
    page = build()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != page:
            diff = difflib.unified_diff(
                current.splitlines(), page.splitlines(), str(args.out), "generated", lineterm="", n=1
            )
            print("\n".join(list(diff)[:20]), file=sys.stderr)
            print(f"gen-api-docs: {args.out} is stale; run 'make api-docs' and commit", file=sys.stderr)
            return 1
        print("gen-api-docs: the API reference is fresh")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    print(f"gen-api-docs: wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
