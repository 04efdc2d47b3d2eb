#!/usr/bin/env bash
# Regenerates the committed protobuf/gRPC stubs in authgate_plugin/_proto/ from
# ../../proto/authgate/plugin/v1/plugin.proto.
#
#   ./generate.sh            write the stubs into authgate_plugin/_proto/
#   ./generate.sh OUT_DIR    write them into OUT_DIR instead (check_generated.py uses this)
#
# Needs grpcio-tools at exactly the pinned version below: the generated files embed the
# version that produced them (and require at least that grpcio/protobuf at run time), so
# another version produces different files. Install it with
#   python3 -m pip install grpcio-tools==1.85.1
set -euo pipefail

GRPCIO_TOOLS_VERSION="1.85.1"

here="$(cd "$(dirname "$0")" && pwd)"
proto_root="$here/../../proto"
out="${1:-$here/authgate_plugin/_proto}"
python="${PYTHON:-python3}"

installed="$("$python" -c 'from importlib.metadata import version; print(version("grpcio-tools"))' 2>/dev/null || true)"
if [ "$installed" != "$GRPCIO_TOOLS_VERSION" ]; then
  echo "generate.sh: needs grpcio-tools==$GRPCIO_TOOLS_VERSION (found: ${installed:-none});" \
       "run: $python -m pip install grpcio-tools==$GRPCIO_TOOLS_VERSION" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$python" -m grpc_tools.protoc \
  -I "$proto_root" \
  --python_out="$tmp" \
  --pyi_out="$tmp" \
  --grpc_python_out="$tmp" \
  authgate/plugin/v1/plugin.proto

mkdir -p "$out"
gen="$tmp/authgate/plugin/v1"
cp "$gen/plugin_pb2.py" "$gen/plugin_pb2.pyi" "$out/"
# protoc writes an absolute import of the message module; make it package-relative so the
# stubs work from inside authgate_plugin._proto.
sed -e 's/^from authgate\.plugin\.v1 import plugin_pb2 as /from . import plugin_pb2 as /' \
  "$gen/plugin_pb2_grpc.py" > "$out/plugin_pb2_grpc.py"
if grep -q '^from authgate\.' "$out/plugin_pb2_grpc.py"; then
  echo "generate.sh: could not rewrite the import in plugin_pb2_grpc.py" >&2
  exit 1
fi
