"""A Python gRPC client of authgate (grpcio), as a polyglot microservice would use it.

Usage: python3 tests/python/get_token.py HOST:PORT TENANT CREDENTIAL
Compiles proto/ with grpcio-tools into a temporary directory, calls GetToken twice and
ListEvents, and prints one JSON line with what it saw. Exit status 0 on success.
"""

import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc


def main() -> int:
    addr, tenant, credential = sys.argv[1:4]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proto_dir = os.path.join(root, "proto")
    out = tempfile.mkdtemp(prefix="authgate-py-")
    import grpc_tools

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main([
        "protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        os.path.join(proto_dir, "authgate/v1/authgate.proto"),
    ])
    if rc != 0:
        print("protoc failed", file=sys.stderr)
        return 2
    sys.path.insert(0, out)
    from authgate.v1 import authgate_pb2 as pb
    from authgate.v1 import authgate_pb2_grpc as rpc

    with grpc.insecure_channel(addr) as channel:
        stub = rpc.TokenServiceStub(channel)
        first = stub.GetToken(pb.GetTokenRequest(tenant=tenant, credential_id=credential), timeout=10)
        second = stub.GetToken(pb.GetTokenRequest(tenant=tenant, credential_id=credential), timeout=10)
        events = stub.ListEvents(pb.ListEventsRequest(tenant=tenant, page_size=100), timeout=10)
        try:
            stub.GetToken(pb.GetTokenRequest(tenant=tenant, credential_id="missing"), timeout=10)
            missing = "OK"
        except grpc.RpcError as e:
            missing = e.code().name
    print(json.dumps({
        "access_token": first.access_token,
        "same_token": first.access_token == second.access_token,
        "token_type": first.token_type,
        "expires_at": first.expires_at.seconds,
        "events": len(events.events),
        "missing_code": missing,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
