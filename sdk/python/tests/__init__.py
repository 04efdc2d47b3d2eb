"""Unit tests of the authgate_plugin SDK (standard library unittest plus grpcio).

Run from the repository root:
    PYTHONPATH=sdk/python python3 -m unittest discover -s sdk/python/tests -t sdk/python
(tests/python_sdk.rs runs exactly this under ``cargo test``).
"""
