"""The webrtc package's surface: exports, import arrows, config objects, ICE host restriction, SDP helpers."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import aioice.ice
import pytest

import webrtc
from webrtc import IceServer, SourceConfig, SourceKind, WebRTCConfig, WebRTCConfigError
from webrtc.sdp import add_bitrate_hint

PACKAGE = Path(webrtc.__file__).parent


def test_webrtc_package_exports_every_public_name():
    names = set()
    for path in PACKAGE.glob("*.py"):
        if path.stem.startswith("_"):
            continue
        module = importlib.import_module(f"webrtc.{path.stem}")
        names |= set(getattr(module, "__all__", ()))
    missing = {n for n in names if not hasattr(webrtc, n)}
    internal = {"check_offer_sdp", "add_bitrate_hint", "open_player", "start_discarding", "validate_source_name",
                "mask_url_secrets", "trim_heap", "FFmpegVideoDecoder", "decoders_made", "install",
                # the receive path's internals (decoders.py, loss.py, sockets.py, shrink.py): installed by the server
                "LOSS_WAIT_S", "MAX_QUEUED_FRAMES", "PLI_INTERVAL_S", "PLI_MAX_INTERVAL_S", "RepairingJitterBuffer",
                "frames_dropped_behind", "gaps_skipped", "granted_rcvbuf", "hand_over_worker", "install_media_demux",
                "installed_rcvbuf", "shrunk", "pooled_worker",
                # decode_pool.py and feedback.py, installed the same way
                "DECODE_THREADS", "DecodePool", "PooledDecodeQueue", "StreamDecoder", "MIN_INTERVAL_MS", "SEND_AT_ONCE_DROP",
                "ThrottledBitrateEstimator", "held_back", "MAX_PENDING_FRAMES", "frames_dropped_pending", "is_keyframe"}
    assert missing <= internal, missing - internal
    assert set(webrtc.__all__) <= set(dir(webrtc))
    assert webrtc.WebRTCDriver is webrtc.WebRTCServer


def test_webrtc_package_imports_nothing_of_ours():
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module or ""]
            for mod in mods:
                assert mod.split(".")[0] not in {"visual_agent", "providers", "encoders"}, f"{path.name} imports {mod}"


def test_webrtc_config_from_mapping_and_masking():
    cfg = WebRTCConfig.from_mapping({
        "port": 0,
        "ice_servers": ["stun:stun.example.org:3478",
                        {"urls": ["turn:turn.example.org:3478"], "username": "u", "credential": "s3cret"}],
        "host_candidate_addresses": "127.0.0.1",
    })
    assert cfg.ice_servers[0] == IceServer(urls=("stun:stun.example.org:3478",))
    assert cfg.ice_servers[1].to_browser() == {"urls": ["turn:turn.example.org:3478"], "username": "u", "credential": "s3cret"}
    assert "s3cret" not in repr(cfg) and "***" in repr(cfg)
    assert cfg.host_candidate_addresses == ["127.0.0.1"]
    with pytest.raises(WebRTCConfigError, match="unknown keys.*'prot'"):
        WebRTCConfig.from_mapping({"prot": 1})
    with pytest.raises(WebRTCConfigError, match="max_peers"):
        WebRTCConfig(max_peers=0)
    with pytest.raises(WebRTCConfigError, match="stun:/turn:"):
        WebRTCConfig(ice_servers=["http://example.org"])
    with pytest.raises(WebRTCConfigError, match="host_candidate_addresses.*'localhost'"):
        WebRTCConfig(host_candidate_addresses=["localhost"])  # checked when the config is read, not at start()
    with pytest.raises(WebRTCConfigError, match="peer_idle_timeout_s"):
        WebRTCConfig(peer_idle_timeout_s=0)
    assert SourceConfig(name="cam", kind="v4l2", url="/dev/video0").kind is SourceKind.V4L2


def test_webrtc_ice_restrict_host_addresses_filters_by_family():
    try:
        webrtc.restrict_host_addresses(["127.0.0.1", "::1"])
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]
        with pytest.raises(ValueError):
            webrtc.restrict_host_addresses(["not-an-address"])
        webrtc.restrict_host_addresses(None)
        assert webrtc.current_host_addresses() is None
        assert "127.0.0.1" not in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)  # aioice's own rule
    finally:
        webrtc.restrict_host_addresses(["127.0.0.1"])


def test_webrtc_sdp_bitrate_hint_added_to_each_video_codec():
    sdp = "\r\n".join([
        "v=0", "m=video 9 UDP/TLS/RTP/SAVPF 97 99", "a=rtpmap:97 VP8/90000", "a=rtpmap:98 rtx/90000",
        "a=fmtp:98 apt=97", "a=rtpmap:99 H264/90000", "a=fmtp:99 packetization-mode=1", "",
    ])
    out = add_bitrate_hint(sdp, 2000).split("\r\n")
    assert "a=fmtp:97 x-google-start-bitrate=2000;x-google-min-bitrate=1000" in out
    assert "a=fmtp:99 packetization-mode=1;x-google-start-bitrate=2000;x-google-min-bitrate=1000" in out
    assert "a=fmtp:98 apt=97" in out  # rtx untouched
    assert add_bitrate_hint(sdp, None) == sdp
