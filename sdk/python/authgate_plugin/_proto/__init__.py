"""Generated protobuf and gRPC stubs for authgate.plugin.v1 (see ../../generate.sh).

Do not edit the ``plugin_pb2*`` files by hand: regenerate them with
``sdk/python/generate.sh``.
"""
