"""HTTPS and tokens end to end: `visual-agent cert`, a server on a certificate from a CA made here, aiortc and
headless Chromium publishing through it with the token from the page's URL fragment."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from pathlib import Path

import aiohttp
import pytest

from tests.fixtures.pki import TestCA
from tests.fixtures.webrtc import CHROMIUM_ARGS, CHROMIUM_PATH, CounterVideoTrack, publish
from tests.waiting import wait_until
from webrtc import WebRTCConfig, WebRTCConfigError, WebRTCServer

pytestmark = [pytest.mark.webrtc, pytest.mark.timeout(120)]

TOKEN = "https-test-token-0123456789"


def _write_test_ca_and_server_cert(folder: Path, names: list[str]) -> tuple[Path, Path, Path, str]:
    """A CA and a server certificate it signed for `names`; returns (ca, chain, key, base64 SHA-256 of the CA's SPKI)."""
    ca = TestCA(folder)
    chain, key = ca.issue("chain", names, chain=True)
    return ca.pem, chain, key, ca.spki_sha256


@pytest.fixture
def test_ca(tmp_path: Path):
    return _write_test_ca_and_server_cert(tmp_path, ["localhost", "127.0.0.1", "cam.example"])


@pytest.fixture
async def https_server(test_ca):
    _, chain, key, _ = test_ca
    server = WebRTCServer(WebRTCConfig(port=0, host_candidate_addresses=["127.0.0.1"], auth_token=TOKEN,
                                       tls_certfile=str(chain), tls_keyfile=str(key)))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def test_cert_command_makes_a_pair_and_prints_its_fingerprint(tmp_path, capsys):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from visual_agent.cli import main

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    assert main(["cert", "cam.local", "192.168.1.20", "--cert", str(cert), "--key", str(key)]) == 0
    out = capsys.readouterr().out
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    der = loaded.public_bytes(serialization.Encoding.DER)
    expected = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    assert f"SHA-256 fingerprint: {expected}" in out
    san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["cam.local"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["192.168.1.20"]
    assert key.stat().st_mode & 0o077 == 0  # the key is the owner's only
    assert main(["cert", "cam.local", "--cert", str(cert), "--key", str(key)]) == 2  # no silent overwrite
    assert "exists" in capsys.readouterr().err


def test_cert_force_over_a_readable_key_leaves_the_new_key_owner_only(tmp_path, capsys):
    """`cert --force` over an existing 0644 key: the new key is a new file made 0600 and renamed into place."""
    from visual_agent.cli import main

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("old certificate\n")
    key.write_text("old key\n")
    key.chmod(0o644)
    assert main(["cert", "cam.local", "--cert", str(cert), "--key", str(key), "--force"]) == 0
    assert key.stat().st_mode & 0o777 == 0o600 and b"PRIVATE KEY" in key.read_bytes()
    assert b"CERTIFICATE" in cert.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pem", "k.pem"]  # no temporary file left


@pytest.mark.parametrize("which", ["key", "cert"])
def test_cert_refuses_to_write_through_a_symlink(tmp_path, capsys, which):
    """A symlink where the key (or certificate) goes is refused, even with --force: its target stays as it was."""
    from visual_agent.cli import main

    victim = tmp_path / "victim.txt"
    victim.write_text("not yours\n")
    victim.chmod(0o644)
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    (key if which == "key" else cert).symlink_to(victim)
    assert main(["cert", "cam.local", "--cert", str(cert), "--key", str(key), "--force"]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "not yours\n" and victim.stat().st_mode & 0o777 == 0o644
    dangling = tmp_path / "d.pem"
    dangling.symlink_to(tmp_path / "nowhere.pem")  # a link to nothing yet: writing would create its target
    assert main(["cert", "cam.local", "--cert", str(cert.with_name("c2.pem")), "--key", str(dangling)]) == 2
    assert not (tmp_path / "nowhere.pem").exists()


def test_webrtc_tls_needs_both_files_and_names_a_missing_one(tmp_path):
    with pytest.raises(WebRTCConfigError, match="go together"):
        WebRTCConfig(tls_certfile=str(tmp_path / "c.pem"))

    async def start() -> None:
        await WebRTCServer(WebRTCConfig(port=0, tls_certfile=str(tmp_path / "c.pem"),
                                        tls_keyfile=str(tmp_path / "k.pem"))).start()

    with pytest.raises(WebRTCConfigError, match="no file"):
        asyncio.run(start())


async def test_webrtc_https_serves_and_takes_certificate_names_as_hosts(https_server, test_ca):
    ca, *_ = test_ca
    trust = ssl.create_default_context(cafile=str(ca))
    assert https_server.url.startswith("https://")
    async with aiohttp.ClientSession() as http:
        async with http.get(https_server.url + "/healthz", ssl=trust) as r:
            assert await r.json() == {"status": "ok"}
        async with http.get(https_server.url + "/healthz", ssl=trust,
                            headers={"Host": f"cam.example:{https_server.port}",
                                     "Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200 and "sources" in await r.json()  # a name in the certificate is an allowed host
        async with http.get(https_server.url + "/healthz", ssl=trust, headers={"Host": "evil.example"}) as r:
            assert r.status == 421
        with pytest.raises(aiohttp.ClientError):  # plain HTTP to the HTTPS port gets nothing
            async with http.get(f"http://127.0.0.1:{https_server.port}/healthz") as r:
                await r.read()
    async with publish(https_server.url, CounterVideoTrack(160, 120), source="tls", token=TOKEN, ssl=trust):
        await https_server.get_buffer("tls").wait_for_frame(10)


async def wait_js(page, expression: str, timeout: float = 20.0) -> None:
    """Poll `expression` with page.evaluate (playwright's wait_for_function evals strings, which the page's CSP
    forbids; evaluate does not go through the page's policy)."""
    await wait_until(lambda: page.evaluate(expression), timeout, what=expression, interval=0.1)


@pytest.fixture
async def chromium_trusting(test_ca):
    """A headless Chromium that trusts the test CA (by its key: --ignore-certificate-errors-spki-list)."""
    if not Path(CHROMIUM_PATH).exists():
        pytest.skip("chromium is not installed (scripts/setup_test_env.sh installs it)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    *_, spki = test_ca
    pw = await async_playwright().start()
    browser = await pw.chromium.launch(executable_path=CHROMIUM_PATH, headless=True,
                                       args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={spki}"])
    try:
        yield browser
    finally:
        await browser.close()
        await pw.stop()


@pytest.mark.browser
async def test_webrtc_https_page_publishes_with_token_from_fragment(https_server, chromium_trusting, caplog):
    caplog.set_level("DEBUG")  # every server log line must be free of the token (there is no access log)
    seen: list[str] = []
    https_server.on_data_message = lambda source, peer_id, text: seen.append(text)
    context = await chromium_trusting.new_context()
    page = await context.new_page()
    requests: list[str] = []
    page.on("request", lambda req: requests.append(req.url))
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    try:
        await page.goto(f"{https_server.url}/?source=secure&res=640x480&fps=30&autostart=1#token={TOKEN}")
        assert await page.evaluate("window.isSecureContext")
        await wait_js(page, "window.agentPage.state === 'connected'")
        await https_server.get_buffer("secure").wait_for_frame(15)
        assert TOKEN not in await page.evaluate("location.href")  # moved out of the address bar
        assert not any(TOKEN in url for url in requests)  # never in a query string
        await wait_js(page, "window.agentPage.dc && window.agentPage.dc.readyState === 'open'")
        await page.fill("#question", "hello over https")
        await page.click("#ask-button")
        await wait_until(lambda: seen, 10, what=lambda: f"the question over the data channel (console: {console})")
        assert json.loads(seen[0])["question"] == "hello over https"
        # a reload keeps the token for the tab (sessionStorage), and the reconnect proves it owns "secure"
        first = await page.evaluate("window.agentPage.peerId")
        await page.reload()
        await page.goto(f"{https_server.url}/?source=secure&res=640x480&fps=30&autostart=1")
        await wait_js(page, f"window.agentPage.state === 'connected' && window.agentPage.peerId !== '{first}'")
        assert await page.evaluate("window.agentPage.errors") == []
    finally:
        await context.close()
    assert any("connected as source 'secure'" in r.getMessage() for r in caplog.records)
    assert not [r.getMessage() for r in caplog.records if TOKEN in r.getMessage()]


@pytest.mark.browser
async def test_webrtc_https_page_without_token_says_so(https_server, chromium_trusting):
    context = await chromium_trusting.new_context()
    page = await context.new_page()
    try:
        await page.goto(f"{https_server.url}/?source=anon&autostart=1")
        await wait_js(page, "window.agentPage.state === 'error'")
        errors = await page.evaluate("window.agentPage.errors")
        assert len(errors) == 1 and "#token=" in errors[0]
        assert https_server.peers() == []
    finally:
        await context.close()


async def test_webrtc_https_silent_tls_client_is_cut_off(test_ca):
    """A client that connects to the HTTPS port and never starts TLS does not hold the connection."""
    _, chain, key, _ = test_ca
    config = WebRTCConfig(port=0, auth_token=TOKEN, tls_certfile=str(chain), tls_keyfile=str(key), header_timeout_s=0.5)
    async with WebRTCServer(config) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            assert await asyncio.wait_for(reader.read(), 10) == b""
        finally:
            writer.close()
