"""The bus token on the command line: ``$CORDTRIO_BUS_TOKEN`` or ``--token-file PATH`` for
``serve`` and ``worker``, and ``serve`` refusing to open the bus to other machines without
one. (A worker process with the right and a wrong token: ``tests/e2e/test_token_processes.py``.)
Exit status 4 here means the checks passed and the command went on to dial Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from cordtrio.cli import main

HANDLERS = str(Path(__file__).resolve().parents[1] / "e2e" / "e2e_handlers.py")


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORDTRIO_BUS_TOKEN", raising=False)


def error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("cordtrio: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("address", ["tcp://0.0.0.0:7400", "tcp://10.1.2.3:7400",
                                     "tcp://engine-host:7400"])
def test_serve_refuses_a_reachable_tcp_address_without_a_token(
        address: str, dead_redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--listen", address, "--redis", dead_redis_url]) == 2
    err = error(capsys)
    assert address in err and "--token-file" in err and "CORDTRIO_BUS_TOKEN" in err
    assert "--insecure" in err


@pytest.mark.parametrize("extra", [["--insecure"], ["--token-file", "TOKEN"], ["ENV"]])
def test_with_a_token_or_insecure_serve_goes_on(
        extra: list[str], tmp_path: Path, dead_redis_url: str,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    if extra == ["ENV"]:
        monkeypatch.setenv("CORDTRIO_BUS_TOKEN", "s3cret")
        extra = []
    extra = [str(token) if a == "TOKEN" else a for a in extra]
    argv = ["serve", "--listen", "tcp://0.0.0.0:7400", "--redis", dead_redis_url, *extra]
    assert main(argv) == 4
    assert "127.0.0.1" in error(capsys)  # the unreachable Redis, not the address


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:7400", "tcp://[::1]:7400",
                                     "tcp://localhost:7400", "ipc:///tmp/never-used.ipc"])
def test_serve_needs_no_token_on_addresses_only_this_machine_reaches(
        address: str, dead_redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--listen", address, "--redis", dead_redis_url]) == 4
    error(capsys)


@pytest.mark.parametrize("command", [
    ["serve", "--listen", "ipc:///tmp/never-used.ipc"],
    ["worker", "--connect", "ipc:///tmp/never-used.ipc", "--handlers", HANDLERS],
])
def test_an_empty_or_missing_token_file_is_a_usage_error(
        command: list[str], tmp_path: Path, dead_redis_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path, says in ((empty, "empty"), (tmp_path / "missing", "cannot read")):
        assert main([*command, "--redis", dead_redis_url, "--token-file", str(path)]) == 2
        err = error(capsys)
        assert str(path) in err and says in err
