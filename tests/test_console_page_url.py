"""The printed page URL names a host a phone can open: the certificate's name, else a LAN address, never 0.0.0.0."""

from __future__ import annotations

import pytest

from tests.fixtures.pki import TestCA
from webrtc import WebRTCConfig, WebRTCServer
from webrtc.addresses import lan_addresses, reachable_hosts

pytestmark = [pytest.mark.webrtc]


async def test_console_page_url_of_a_wildcard_server_names_the_certificate(tmp_path):
    cert, key = TestCA(tmp_path).issue("server", ["camera-box.lan", "localhost", "127.0.0.1"])
    config = WebRTCConfig(host="0.0.0.0", port=0, tls_certfile=str(cert), tls_keyfile=str(key), auth_token="t" * 32)
    async with WebRTCServer(config) as server:
        assert server.page_url() == f"https://camera-box.lan:{server.port}/#token={'t' * 32}"


async def test_console_page_url_of_a_wildcard_server_without_tls_names_a_lan_address():
    async with WebRTCServer(WebRTCConfig(host="0.0.0.0", port=0, auth_token="t" * 32)) as server:
        host = reachable_hosts("0.0.0.0")[0]
        assert host != "0.0.0.0" and server.page_url() == f"http://{host}:{server.port}/#token={'t' * 32}"
        assert host in lan_addresses() or (not lan_addresses() and host == "127.0.0.1")


def test_console_reachable_hosts_keeps_a_named_host_and_skips_wildcard_names():
    assert reachable_hosts("127.0.0.1", ["camera-box.lan"]) == ["127.0.0.1"]
    assert reachable_hosts("::", ["*.lan", "localhost", "cam.example"])[0] == "cam.example"


def test_console_url_command_names_the_certificate_for_a_wildcard_bind(tmp_path):
    """`visual-agent url` builds the same URL as the running daemon prints."""
    from visual_agent.page_link import page_url

    cert, key = TestCA(tmp_path).issue("server", ["camera-box.lan"])
    web = WebRTCConfig(host="0.0.0.0", port=8443, tls_certfile=str(cert), tls_keyfile=str(key), auth_token="t" * 32)
    assert page_url(web) == f"https://camera-box.lan:8443/#token={'t' * 32}"
    assert page_url(web, host="10.0.0.5") == f"https://10.0.0.5:8443/#token={'t' * 32}"
