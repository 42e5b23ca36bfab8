"""Who may speak on the nng bus: a shared token proven by challenge-response, TLS, and
which connection may publish which job packets. Real sockets; a run on a real engine."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
import pynng
import pytest
import trio
from nng_waits import WAIT, eventually, receive_raw

from cordtrio.backends.memory import MemoryPayloadStore, MemoryStore
from cordtrio.backends.nng import NngBus, open_nng_bus, open_nng_router
from cordtrio.backends.nng._auth import proof
from cordtrio.engine import open_engine
from cordtrio.errors import CordtrioError, ProtocolError
from cordtrio.model import RunStatus, Step, Workflow
from cordtrio.protocol import (
    SUBJECT_CANCEL,
    SUBJECT_RESULT,
    SUBJECT_SUBMIT,
    BusPacket,
    JobCancel,
    JobRequest,
    JobResult,
    JobStatus,
    encode_packet,
)
from cordtrio.worker import Job, open_worker

TOKEN = "correct horse battery staple"


@asynccontextmanager
async def client(url: str, token: str | None = TOKEN, **options: Any) -> AsyncIterator[NngBus]:
    options.setdefault("connect_timeout", WAIT)
    async with open_nng_bus(url, token=token, **options) as bus:
        yield bus


def packet(payload: Any, trace: str = "r") -> BusPacket:
    return BusPacket(trace_id=trace, sender_id="test",
                     created_at=datetime(2030, 1, 1, tzinfo=UTC), payload=payload)


# ------------------------------------------------------------------ the token


async def test_a_missing_or_wrong_token_is_a_clear_error_naming_the_address(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cordtrio.bus.nng")
    async with open_nng_router(url, token=TOKEN) as router:
        with pytest.raises(CordtrioError, match=r"bus\.ipc.*requires a token"):
            async with client(url, token=None):
                pass
        with trio.fail_after(WAIT), pytest.raises(CordtrioError,
                                                  match=r"bus\.ipc.*refused this client"):
            async with client(url, token="wrong"):
                pass
        assert router.auth_failures >= 1
        async with client(url) as ok:  # the right one
            assert ok.connected and not ok.refused
    assert "refused client pipe" in caplog.text
    assert TOKEN not in caplog.text
    async with open_nng_router(url):  # no token on the router, one on the client
        with pytest.raises(CordtrioError, match=r"bus\.ipc.*has no token"):
            async with client(url):
                pass


def forgeries(job_id: str) -> list[dict[str, Any]]:
    """What an intruder tries: take jobs, tap requests, report and cancel a job."""
    return [
        {"op": "jobs", "cid": 1, "topics": ["job.a"], "cap": 10},
        {"op": "sub", "sid": 2, "subject": SUBJECT_SUBMIT, "queue": "", "room": 10},
        {"op": "pub", "pid": 3, "subject": SUBJECT_RESULT, "jid": job_id,
         "packet": encode_packet(packet(JobResult(job_id, JobStatus.FAILED,
                                                  error_message="forged")))},
        {"op": "pub", "pid": 4, "subject": SUBJECT_CANCEL, "jid": job_id,
         "packet": encode_packet(packet(JobCancel(job_id, reason="forged")))},
        {"op": "pub", "pid": 5, "subject": SUBJECT_SUBMIT, "jid": "r:x@1", "topic": "job.a",
         "packet": encode_packet(packet(JobRequest("r:x@1", topic="job.a")))},
    ]


async def intrude(url: str, auth: Callable[[dict[str, Any]], list[dict[str, Any]]],
                  job_id: str) -> list[str]:
    """Dial with a bare socket, send ``auth(hello)`` and the forgeries; return the op
    names received up to and including ``denied``."""
    with pynng.Pair1(dial=url, block_on_dial=True) as raw:
        got: list[str] = []
        with trio.fail_after(WAIT):
            hello = cbor2.loads((await receive_raw(raw)).bytes)[0]
            got.append(hello["op"])
            raw.send(cbor2.dumps([*auth(hello), *forgeries(job_id)]))
            while got[-1] != "denied":
                got += [op["op"] for op in cbor2.loads((await receive_raw(raw)).bytes)]
    return got


async def test_connections_without_the_token_get_nothing_and_change_nothing(
    url: str,
) -> None:
    """A run whose job is in progress: a connection with no proof and one with a wrong
    proof try to take jobs, tap requests, and report and cancel the job. They get hello
    and denied, nothing else; the run finishes with the real worker's output."""
    store, payloads = MemoryStore(), MemoryPayloadStore()
    await store.save_workflow(Workflow(id="wf", org_id="o", steps={
        "s": Step(id="s", topic="job.a")}))
    running: list[str] = []
    release = trio.Event()

    async def handler(job: Job) -> dict[str, Any]:
        running.append(job.request.job_id)
        await release.wait()
        return {"by": "the worker"}

    async with (
        open_nng_router(url, token=TOKEN) as router,
        open_engine(store, router, payloads=payloads) as engine,
        client(url) as worker_bus,
        open_worker(worker_bus, payloads, {"job.a": handler}, worker_id="w"),
    ):
        run_id = await engine.submit("wf", {})
        await eventually(lambda: bool(running), "the job to start")
        job_id = running[0]
        nothing = await intrude(url, lambda hello: [], job_id)
        wrong = await intrude(url, lambda hello: [
            {"op": "auth", "mac": proof("wrong", hello["nonce"], hello["conn"])}], job_id)
        assert nothing == wrong == ["hello", "denied"]
        assert router.auth_failures == 2
        assert router.pending_jobs == 0 and router.held_jobs == 1  # no r:x@1 queued
        release.set()
        with trio.fail_after(WAIT):
            run = await engine.wait_run(run_id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.context["steps"]["s"]["output"] == {"by": "the worker"}
    assert running == [job_id]  # not cancelled, not run again


# ------------------------------------------------------------------ job packets


async def test_a_worker_connection_cannot_complete_or_cancel_another_workers_job(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cordtrio.bus.nng")
    async with (
        open_nng_router(url, token=TOKEN) as router,
        router.subscribe(SUBJECT_RESULT) as results,
        router.subscribe(SUBJECT_CANCEL) as cancels,
        client(url) as a_bus,
        client(url) as b_bus,
        client(url) as engine_bus,
        a_bus.consume_jobs(["job.a"], capacity=1) as a,
        b_bus.consume_jobs(["job.b"], capacity=1),
    ):
        await engine_bus.publish(SUBJECT_SUBMIT, packet(JobRequest("r:s@1", topic="job.a")))
        with trio.fail_after(WAIT):
            await a.receive()
        forged = packet(JobResult("r:s@1", JobStatus.SUCCEEDED, worker_id="b"))
        for bus in (b_bus, engine_bus):  # another worker, and a connection holding nothing
            with pytest.raises(ProtocolError, match=r"forbidden.*not held by this connection"):
                await bus.publish(SUBJECT_RESULT, forged)
        with pytest.raises(ProtocolError, match=r"forbidden.*takes jobs"):
            await b_bus.publish(SUBJECT_CANCEL, packet(JobCancel("r:s@1", reason="no")))
        with pytest.raises(ProtocolError, match=r"forbidden.*takes jobs"):
            await b_bus.publish(SUBJECT_SUBMIT, packet(JobRequest("r:t@1", topic="job.a")))
        assert router.forbidden_ops == 4
        # a result for a job the router does not hold (from before a restart) goes through
        await b_bus.publish(SUBJECT_RESULT, packet(JobResult("r:old@1", JobStatus.SUCCEEDED)))
        # the holder's own result does, and the engine's cancels do
        await a_bus.publish(SUBJECT_RESULT, packet(JobResult("r:s@1", JobStatus.SUCCEEDED,
                                                             worker_id="a")))
        a.ack("r:s@1")
        await engine_bus.publish(SUBJECT_CANCEL, packet(JobCancel("r:u@1", reason="ok")))
        with trio.fail_after(WAIT):
            got = [await results.receive() for _ in range(2)]
            assert (await cancels.receive()).payload == JobCancel("r:u@1", reason="ok")
        assert router.pending_jobs == 0  # r:t@1 never got in
    assert [(p.payload.job_id, p.payload.worker_id) for p in got  # type: ignore[union-attr]
            ] == [("r:old@1", ""), ("r:s@1", "a")]
    assert "not held by this connection" in caplog.text


# ------------------------------------------------------------------ TLS


def self_signed_certificate(directory: Path) -> tuple[str, str]:
    """A certificate for ``localhost`` and its key (PEM files), made with ``openssl``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        message = "neither the cryptography package nor the openssl command is available"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true: the TLS test must run")
        pytest.skip(message)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def certificate(directory: Path) -> tuple[str, str]:
    try:
        from cryptography import x509  # noqa: F401
    except ImportError:
        return self_signed_certificate(directory)
    return _certificate_with_cryptography(directory)


def _certificate_with_cryptography(directory: Path) -> tuple[str, str]:  # pragma: no cover
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


async def test_a_round_trip_over_tls(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path)
    async with open_nng_router("tls+tcp://127.0.0.1:0", token=TOKEN, tls_cert_file=cert,
                               tls_key_file=key) as router:
        address = router.urls[0]
        assert address.startswith("tls+tcp://127.0.0.1:") and not address.endswith(":0")
        async with (
            client(address, tls_ca_file=cert, tls_server_name="localhost") as bus,
            bus.subscribe("s") as sub,
            bus.consume_jobs(["job.a"], capacity=1) as jobs,
        ):
            await router.publish("s", packet(None, trace="over tls"))
            await router.publish(SUBJECT_SUBMIT, packet(JobRequest("r:s@1", topic="job.a")))
            with trio.fail_after(WAIT):
                assert (await sub.receive()).trace_id == "over tls"
                assert (await jobs.receive()).payload == JobRequest("r:s@1", topic="job.a")
        with pytest.raises(CordtrioError, match="tls_ca_file"):
            async with client(address):
                pass
        with pytest.raises(CordtrioError, match=r"no router answered at 'tcp://"):
            async with client(address.replace("tls+tcp", "tcp"), connect_timeout=1):
                pass  # speaking plain TCP to a TLS listener gets nowhere
