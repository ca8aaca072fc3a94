"""TLS and mutual TLS between edge and cloud, TLS on the cloud's REST API, and the edge WebSocket token."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from pydantic import SecretStr
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from asr_common.protos import speech_pb2, speech_pb2_grpc
from edge_agent.escalation.breaker import CircuitBreaker
from edge_agent.escalation.client import CloudClient, CloudUnavailable
from edge_agent.escalation.manager import channel_credentials
from edge_agent.settings import EdgeSettings
from tests.certs import Pem, issue, make_ca
from tests.servers import ThreadedCloud, ThreadedEdge, cloud_settings, edge_settings
from tests.speech import Clip, wer

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pem]:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_cert, ca_key = make_ca(d, "test-ca")
    rogue, rogue_cert, rogue_key = make_ca(d, "rogue-ca")
    return {
        "ca": ca,
        "server": issue(d, "server", ca_cert, ca_key, server=True),
        "client": issue(d, "client", ca_cert, ca_key, server=False),
        "rogue_ca": rogue,
        "rogue_client": issue(d, "rogue-client", rogue_cert, rogue_key, server=False),
    }


@pytest.fixture(scope="module")
def tls_cloud(model_cache: str, pki: dict[str, Pem]) -> Iterator[ThreadedCloud]:
    s = cloud_settings(
        model_cache, model="tiny.en", tls_cert_file=pki["server"].cert, tls_key_file=pki["server"].key
    )
    cloud = ThreadedCloud(s).start()
    yield cloud
    cloud.stop()


@pytest.fixture(scope="module")
def mtls_cloud(model_cache: str, pki: dict[str, Pem]) -> Iterator[ThreadedCloud]:
    s = cloud_settings(
        model_cache, model="tiny.en", tls_cert_file=pki["server"].cert, tls_key_file=pki["server"].key,
        tls_client_ca_file=pki["ca"].cert,
    )  # fmt: skip
    cloud = ThreadedCloud(s).start()
    yield cloud
    cloud.stop()


def _request(clip: Clip) -> speech_pb2.RecognizeRequest:
    return speech_pb2.RecognizeRequest(config=speech_pb2.RecognitionConfig(language="en"), audio=clip.pcm16())


def _call(channel: grpc.Channel, clip: Clip) -> speech_pb2.RecognizeResponse:
    return speech_pb2_grpc.CloudRecognizerStub(channel).Recognize(_request(clip), timeout=30)


def _creds(pki: dict[str, Pem], ca: str = "ca", client: str | None = None) -> grpc.ChannelCredentials:
    pair = (pki[client].key.read_bytes(), pki[client].cert.read_bytes()) if client else (None, None)
    return grpc.ssl_channel_credentials(
        pki[ca].cert.read_bytes(), private_key=pair[0], certificate_chain=pair[1]
    )


def test_tls_server(tls_cloud: ThreadedCloud, pki: dict[str, Pem], real_clips: list[Clip]) -> None:
    clip = real_clips[0]
    with grpc.secure_channel(tls_cloud.grpc_target, _creds(pki)) as channel:
        assert wer([clip.text], [_call(channel, clip).hypotheses[0].text]) < 0.3
    with grpc.insecure_channel(tls_cloud.grpc_target) as channel, pytest.raises(grpc.RpcError) as plain:
        _call(channel, clip)
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(tls_cloud.grpc_target, _creds(pki, "rogue_ca")) as channel:
        with pytest.raises(grpc.RpcError) as wrong_ca:
            _call(channel, clip)
    assert wrong_ca.value.code() == grpc.StatusCode.UNAVAILABLE
    # REST on the same certificate.
    assert httpx.get(
        f"https://127.0.0.1:{tls_cloud.server.rest_port}/health",
        verify=ssl.create_default_context(cafile=str(pki["ca"].cert)),
    ).is_success
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{tls_cloud.server.rest_port}/health", timeout=5)


def test_mutual_tls(mtls_cloud: ThreadedCloud, pki: dict[str, Pem], real_clips: list[Clip]) -> None:
    clip = real_clips[0]
    with grpc.secure_channel(mtls_cloud.grpc_target, _creds(pki, client="client")) as channel:
        assert _call(channel, clip).hypotheses
    for client in (None, "rogue_client"):
        with grpc.secure_channel(mtls_cloud.grpc_target, _creds(pki, client=client)) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                _call(channel, clip)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, client


def test_edge_client_uses_settings_for_mtls(
    mtls_cloud: ThreadedCloud, pki: dict[str, Pem], real_clips: list[Clip]
) -> None:
    good = EdgeSettings(
        cloud_target=mtls_cloud.grpc_target, cloud_ca_file=pki["ca"].cert,
        cloud_client_cert_file=pki["client"].cert, cloud_client_key_file=pki["client"].key,
    )  # fmt: skip
    no_cert = EdgeSettings(cloud_target=mtls_cloud.grpc_target, cloud_ca_file=pki["ca"].cert)
    clip = real_clips[0]
    context = speech_pb2.EdgeContext(utterance_id="tls-1")

    async def recognize(settings: EdgeSettings) -> Any:
        client = CloudClient(
            mtls_cloud.grpc_target,
            None,
            10.0,
            1,
            CircuitBreaker(3, 5.0),
            credentials=channel_credentials(settings),
        )
        try:
            return await client.recognize(clip.pcm16(), context)
        finally:
            await client.close()

    assert wer([clip.text], [asyncio.run(recognize(good)).hypotheses[0].text]) < 0.3
    with pytest.raises(CloudUnavailable):
        asyncio.run(recognize(no_cert))
    with pytest.raises(ValueError, match="both"):
        channel_credentials(EdgeSettings(cloud_client_cert_file=pki["client"].cert))


def test_websocket_token(edge_model: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = "ws-token-8c1f"
    edge = ThreadedEdge(edge_settings(tmp_path, None, ws_token=SecretStr(token)), edge_model).start()
    try:
        for url, headers in (
            (edge.url, {}),
            (edge.url, {"Authorization": "Bearer nope"}),
            (f"{edge.url}?token=x", {}),
        ):
            with connect(url, additional_headers=headers, open_timeout=10) as ws:
                event = json.loads(ws.recv(timeout=10))
                assert event["type"] == "error" and event["code"] == "unauthorized"
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=10)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        start = json.dumps({"type": "start", "sample_rate": 16000})
        for url, headers in (
            (edge.url, {"Authorization": f"Bearer {token}"}),
            (f"{edge.url}?token={token}", {}),
        ):
            with connect(url, additional_headers=headers, open_timeout=10) as ws:
                ws.send(start)
                assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        assert token not in httpx.get(f"{edge.http}/metrics").text
    finally:
        edge.stop()
    assert token not in caplog.text
