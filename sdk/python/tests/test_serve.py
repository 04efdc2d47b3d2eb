"""``serve`` as the gateway starts it: a tiny plugin script in a subprocess, its checks of
the handshake environment, the handshake line, the secret check and the exit when its
standard input closes."""

from __future__ import annotations

import os
import selectors
import stat
import subprocess
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

import grpc

from authgate_plugin._proto import plugin_pb2 as pb
from authgate_plugin._proto import plugin_pb2_grpc as pb_grpc
from authgate_plugin.context import SECRET_METADATA

SDK_DIR = Path(__file__).resolve().parent.parent
SECRET = "a1" * 32
TINY_PLUGIN = textwrap.dedent(
    """
    from authgate_plugin import Plugin, serve

    class Tiny(Plugin):
        kind = "tiny"
        version = "0.1.0"

    serve(Tiny())
    """
)
#: Generous: a cold interpreter importing grpc on a loaded CI machine.
TIMEOUT = 60


def plugin_env(**handshake: str) -> dict[str, str]:
    """This process's environment without any AUTHGATE_PLUGIN_* variable, the SDK under
    test first on PYTHONPATH, plus ``handshake``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHGATE_PLUGIN_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SDK_DIR), env.get("PYTHONPATH")]))
    env.update(handshake)
    return env


class ServeTest(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="agp-")
        self.addCleanup(tmp.cleanup)
        self.tmp = Path(tmp.name)
        self.script = self.tmp / "tiny_plugin.py"
        self.script.write_text(TINY_PLUGIN)
        self.socket_dir = self.tmp / "sockets"
        self.socket_dir.mkdir(mode=0o700)

    def run_plugin(self, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(self.script)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    def full_env(self, **override: str) -> dict[str, str]:
        handshake = {
            "AUTHGATE_PLUGIN_PROTOCOL_VERSION": "1",
            "AUTHGATE_PLUGIN_SECRET": SECRET,
            "AUTHGATE_PLUGIN_SOCKET_DIR": str(self.socket_dir),
            "AUTHGATE_PLUGIN_HOST_SOCKET": str(self.socket_dir / "host.sock"),
        }
        handshake.update(override)
        return plugin_env(**{k: v for k, v in handshake.items() if v is not None})

    def assert_refused(self, env: dict[str, str], expected: str) -> None:
        done = self.run_plugin(env)
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn("authgate-plugin: ", done.stderr)
        self.assertIn(expected, done.stderr)
        self.assertEqual(done.stdout, "", "no handshake line when the environment is wrong")
        self.assertEqual(list(self.socket_dir.iterdir()), [])

    def test_started_by_hand_it_says_it_is_a_plugin(self) -> None:
        self.assert_refused(
            plugin_env(), "AUTHGATE_PLUGIN_PROTOCOL_VERSION is not set: this program is an authgate plugin"
        )

    def test_another_protocol_version_is_refused(self) -> None:
        self.assert_refused(
            self.full_env(AUTHGATE_PLUGIN_PROTOCOL_VERSION="2"),
            "unsupported AUTHGATE_PLUGIN_PROTOCOL_VERSION '2'",
        )

    def test_missing_variables_are_named(self) -> None:
        self.assert_refused(
            plugin_env(AUTHGATE_PLUGIN_PROTOCOL_VERSION="1", AUTHGATE_PLUGIN_SOCKET_DIR=str(self.socket_dir)),
            "missing environment variable(s): AUTHGATE_PLUGIN_SECRET, AUTHGATE_PLUGIN_HOST_SOCKET",
        )

    def test_malformed_secret_is_refused_without_echoing_it(self) -> None:
        bad = "not-hex-" + "z" * 56
        done = self.run_plugin(self.full_env(AUTHGATE_PLUGIN_SECRET=bad))
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn("AUTHGATE_PLUGIN_SECRET must be 64 hex digits", done.stderr)
        self.assertNotIn(bad, done.stderr + done.stdout)

    def test_socket_dir_must_exist(self) -> None:
        self.assert_refused(
            self.full_env(AUTHGATE_PLUGIN_SOCKET_DIR=str(self.tmp / "nowhere")), "is not a directory"
        )

    def test_handshake_secret_check_and_exit_on_stdin_eof(self) -> None:
        proc = subprocess.Popen(
            [sys.executable, str(self.script)],
            env=self.full_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(proc.kill)
        line = read_line(proc, TIMEOUT)
        socket = self.socket_dir / "plugin.sock"
        self.assertEqual(line, f"authgate-plugin|1|unix|{socket}\n".encode())
        self.assertEqual(stat.S_IMODE(socket.stat().st_mode), 0o600)

        with grpc.insecure_channel(f"unix:{socket}") as channel:
            stub = pb_grpc.ProviderStub(channel)
            described = stub.Describe(pb.DescribeRequest(), metadata=((SECRET_METADATA, SECRET),), timeout=10)
            self.assertEqual((described.kind, described.plugin_version), ("tiny", "0.1.0"))
            with self.assertRaises(grpc.RpcError) as caught:
                stub.Describe(pb.DescribeRequest(), timeout=10)
            self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAUTHENTICATED)

        # The gateway is gone when the plugin's standard input closes: it must exit.
        assert proc.stdin is not None
        proc.stdin.close()
        self.assertEqual(proc.wait(timeout=TIMEOUT), 0)
        self.assertFalse(socket.exists(), "the socket is removed on exit")
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The first line of ``proc``'s standard output, or a failure after ``timeout``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            if not selector.select(timeout):
                proc.kill()
                raise AssertionError(f"no handshake line within {timeout} s")
            chunk = os.read(fd, 1)
            if not chunk:
                _, err = proc.communicate(timeout=TIMEOUT)
                raise AssertionError(f"stdout closed before the handshake line; stderr: {err!r}")
            line += chunk
    return line


if __name__ == "__main__":
    unittest.main()
