#!/usr/bin/env bash
# Regenerates the Python code and mypy stubs of every proto into proto/python/src.
# Usage: scripts/genproto.sh [OUTDIR]   (default: proto/python/src; check-protos passes a temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-proto/python/src}
py=${PYTHON:-.venv/bin/python}
bindir=$(dirname "$py")
mapfile -t protos < <(cd proto && find chital -name '*.proto' | LC_ALL=C sort)
# protoc-gen-mypy and protoc-gen-mypy_grpc come from mypy-protobuf in the venv.
PATH="$bindir:$PATH" "$py" -m grpc_tools.protoc -Iproto \
    --python_out="$out" --grpc_python_out="$out" \
    --mypy_out="$out" --mypy_grpc_out="$out" \
    "${protos[@]}"
# Generated packages are regular packages below the PEP 420 namespace chital.api.
for p in "${protos[@]}"; do
    d="$out/$(dirname "$p")"
    [ -f "$d/__init__.py" ] || : > "$d/__init__.py"
done
# PEP 561: the generated modules come with .pyi stubs; py.typed tells type checkers to read them
# from an installed chital-api (mypy looks for the marker in chital/api and its parents).
: > "$out/chital/api/py.typed"
