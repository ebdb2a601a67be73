"""Imports point one way: (benchmarks ->) gateways -> broker -> actors, the public client
(gateways/client/) imports nothing of the server, and `broker/` holds no socket (checked
with `ast`, no imports run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["actors", "broker", "gateways"]  # each may import only the ones before it
THIRD_PARTY_ALLOWED = {
    "actors": {"trio"},
    "broker": {"trio", "orjson", "cbor2", "prometheus_client"},
}
# The domain holds no socket: the gateways write, through an interface broker/ defines.
SOCKET_MODULES = {"socket", "ssl", "select", "selectors"}
SOCKET_METHODS = {
    "send", "sendall", "sendmsg", "recv", "recv_into", "accept", "setsockopt", "shutdown",
}
# Named like a socket method but known not to be one. `reply.send(value)` is the one-shot
# answer to an ask (`actors.Reply.send`), used by the topic and directory actors (the only
# finds in broker/ today). What a check by name cannot see: a socket method handed in and
# stored under another name (`Outbox._write_now` is `sock.send`, from
# gateways/websocket/connection.py).
NOT_SOCKET_USES = {"reply.send"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def imported_names(path: Path, root: Path = ROOT) -> set[str]:
    """The dotted names of what `path` imports, anywhere in it, relative imports resolved
    against its package under `root` (`from .http import x` in gateways/client/ is
    gateways.client.http)."""
    package = path.relative_to(root).parent.parts
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            names.add(".".join([*base, *([node.module] if node.module else [])]))
    return names


def socket_uses(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """(line, what) for each place `source` imports a socket module (`socket`, `ssl`,
    `select`, `selectors`) or names a socket method on anything: `x.send(...)`, or `x.send`
    itself handed on as a callback, or `getattr(x, "send")`. By name only: the receiver's
    type is not known, so a method of another class with such a name is found too."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            found += [
                (node.lineno, f"import {alias.name}")
                for alias in node.names
                if alias.name.split(".")[0] in SOCKET_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in SOCKET_MODULES:
                found.append((node.lineno, f"from {node.module} import ..."))
        elif names_a_socket_method(node):
            found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def names_a_socket_method(node: ast.AST) -> bool:
    """`x.send` (called or not), or `getattr(x, "send")`."""
    if isinstance(node, ast.Attribute):
        return node.attr in SOCKET_METHODS
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "getattr"
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and node.args[1].value in SOCKET_METHODS
    )


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    forbidden = set(LAYERS[LAYERS.index(layer) + 1:])
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & forbidden)
        for path in (ROOT / layer).rglob("*.py")
        if imported_modules(path) & forbidden
    }
    assert offenders == {}


@pytest.mark.parametrize("layer", LAYERS)
def test_no_layer_imports_the_benchmark_suite(layer: str) -> None:
    """benchmarks/ stands apart, above gateways/: it uses the public client and runs
    `python -m gateways`; `broker bench` runs the suite as a program (`python -m
    benchmarks`), it does not import it."""
    offenders = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / layer).rglob("*.py")
        if any(name.split(".")[0] == "benchmarks" for name in imported_names(path))
    )
    assert offenders == []


def test_the_public_client_imports_nothing_of_the_server() -> None:
    """gateways/client/ reaches a broker over the wire only: no `broker`, no `actors`, and
    nothing of gateways/ outside itself."""
    def outside(name: str) -> bool:
        top = name.split(".")[0]
        return top in ("actors", "broker") or (
            top == "gateways" and not (name + ".").startswith("gateways.client.")
        )

    offenders = {
        str(path.relative_to(ROOT)): sorted(filter(outside, imported_names(path)))
        for path in (ROOT / "gateways" / "client").rglob("*.py")
        if any(map(outside, imported_names(path)))
    }
    assert offenders == {}


def test_imported_names_finds_imports_in_functions_and_resolves_relative_ones(
    tmp_path: Path,
) -> None:
    module = tmp_path / "gateways" / "client" / "example.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "from .http import ClientError\n"
        "from .. import errors\n"
        "from ..websocket.frames import text_frame\n"
        "import trio.lowlevel\n"
        "def bench():\n"
        "    from benchmarks.__main__ import main\n"
    )
    assert imported_names(module, tmp_path) == {
        "gateways.client.http", "gateways", "gateways.websocket.frames", "trio.lowlevel",
        "benchmarks.__main__",
    }


@pytest.mark.parametrize("layer", ["actors", "broker"])
def test_inner_layers_use_no_io_framework(layer: str) -> None:
    import sys

    stdlib = set(sys.stdlib_module_names)
    allowed = THIRD_PARTY_ALLOWED[layer] | stdlib | set(LAYERS[: LAYERS.index(layer) + 1])
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) - allowed)
        for path in (ROOT / layer).rglob("*.py")
        if imported_modules(path) - allowed
    }
    assert offenders == {}


def test_the_broker_imports_no_socket_module_and_calls_no_socket_method() -> None:
    offenders = {
        f"{path.relative_to(ROOT)}:{line}": what
        for path in sorted((ROOT / "broker").rglob("*.py"))
        for line, what in socket_uses(path.read_text(), str(path))
        if what not in NOT_SOCKET_USES
    }
    assert offenders == {}


SOURCE_WITH_SOCKETS = """
import socket
import ssl as tls
from selectors import DefaultSelector
import select

def write(sock, frame, conn):
    sock.send(frame)
    conn.transport.sendall(frame)
    self._sock.sendmsg([frame])
    data = sock.recv(10)
    sock.recv_into(buffer)
    listener.accept()
    sock.setsockopt(1, 2, 3)
    sock.shutdown(1)
    return Outbox(write_now=sock.send)

def sneaky(sock):
    getattr(sock, "send")(b"x")
"""


def test_the_socket_check_finds_socket_imports_and_methods_on_anything() -> None:
    assert socket_uses(SOURCE_WITH_SOCKETS) == [
        (2, "import socket"),
        (3, "import ssl"),
        (4, "from selectors import ..."),
        (5, "import select"),
        (8, "sock.send"),
        (9, "conn.transport.sendall"),
        (10, "self._sock.sendmsg"),
        (11, "sock.recv"),
        (12, "sock.recv_into"),
        (13, "listener.accept"),
        (14, "sock.setsockopt"),
        (15, "sock.shutdown"),
        (16, "sock.send"),
        (19, "getattr(sock, 'send')"),
    ]
    assert socket_uses("reply.send(3)") == [(1, "reply.send")]  # by name: allowed by the test


def test_the_socket_check_passes_what_is_not_a_socket_method() -> None:
    source = """
import trio
from .outbox import send_window

class Pending:
    def send(self, offset):
        self._write_now(offset)
        channel.send_nowait(offset)
        self.sender.sendmore = 1

    async def wait(self, offset):
        await channel.send(offset)
"""
    # Defining a `send`, a callback under another name, `send_nowait`: not socket calls.
    # A trio channel's `send` is found like any other (by name): broker/ has none today.
    assert socket_uses(source) == [(12, "channel.send")]


def test_the_code_is_ruff_clean() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "."],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
