#!/bin/sh
# Generates the Python stubs of the gpukill contract from proto/ with grpcio-tools:
# OUT/gpukill/v1/gpukill_pb2.py (messages), gpukill_pb2.pyi (their types) and
# gpukill_pb2_grpc.py (the client stubs). OUT is the first argument, or generated/ here.
# Run it with the Python that has requirements.txt installed (PYTHON=..., else python3).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/generated}
proto=$here/../../proto/proto
mkdir -p "$out"
"${PYTHON:-python3}" -m grpc_tools.protoc \
    --proto_path="$proto" \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    gpukill/v1/gpukill.proto
echo "generated the gpukill stubs in $out"
