"""The `visual-agent` command: `run` (the daemon), `ask` (one question over MQTT), `check` (config and reachability).

Exit codes: 0 success; 1 the answer carried an error, or `check` found a problem; 2 bad usage or config, or `run`
cannot start (the page's port is taken, ...); 3 no answer in time (`ask`) or the broker cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import re
import secrets
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from .config import Config, MqttProtocol
from .config_loading import load_config
from .errors import ConfigError, MessagingError, VisualAgentError

__all__ = ["main"]

DEFAULT_ASK_TIMEOUT_S = 60.0
DEFAULT_CHECK_TIMEOUT_S = 10.0
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
# ANSI/VT escape sequences (CSI, OSC, other ESC forms) and the C0/C1 control characters other than newline and tab:
# an answer is text from a model and the network, and must not drive the user's terminal.
_TERMINAL_CONTROLS = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?|\x9b[0-?]*[ -/]*[@-~]"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)


def printable(text: str) -> str:
    """`text` without terminal escape sequences and control characters (newlines and tabs kept)."""
    return _TERMINAL_CONTROLS.sub("", text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="visual-agent", description="A real-time visual agent: live video in, answers out over MQTT.")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default INFO for run, WARNING otherwise)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon: page, sources, agent, MQTT")
    run.add_argument("--config", "-c", help="YAML config (default: the packaged default.yaml)")

    ask = sub.add_parser("ask", help="ask a running daemon a question over MQTT and print the answer")
    ask.add_argument("question", help="the question")
    ask.add_argument("--config", "-c", help="the daemon's YAML config (finds the broker and the topic prefix)")
    ask.add_argument("--source", "-s", help="which source to look at (default: the daemon's default)")
    ask.add_argument("--frames", "-k", type=int, help="how many frames to look at (default: the daemon's)")
    ask.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    ask.add_argument("--timeout", "-t", type=float, default=DEFAULT_ASK_TIMEOUT_S, help="seconds to wait (default 60)")
    ask.add_argument("--json", action="store_true", help="print the whole answer JSON")
    ask.add_argument("--id", help="question id (default: a random one)")

    check = sub.add_parser("check", help="validate the config, then reach the broker and the LLM")
    check.add_argument("--config", "-c", help="YAML config (default: the packaged default.yaml)")
    check.add_argument("--timeout", "-t", type=float, default=DEFAULT_CHECK_TIMEOUT_S, help="seconds per check (default 10)")
    url = sub.add_parser("url", help="print the page's URL with its token (run prints it only on a terminal)")
    url.add_argument("--config", "-c", help="the daemon's YAML config (default: the packaged default.yaml)")
    url.add_argument("--host", help="the name or address the browser reaches this machine by (default: the bound "
                                    "address; this machine's name when it binds all addresses)")
    cert = sub.add_parser("cert", help="make a self-signed HTTPS certificate for the page; prints its SHA-256 fingerprint")
    cert.add_argument("names", nargs="+", help="host names and IP addresses the page will be opened by")
    cert.add_argument("--cert", default="visual-agent-cert.pem", help="certificate file (default visual-agent-cert.pem)")
    cert.add_argument("--key", default="visual-agent-key.pem", help="key file, made owner-only (default visual-agent-key.pem)")
    cert.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    cert.add_argument("--force", action="store_true", help="overwrite existing files")
    for sp in (run, ask, check, url, cert):  # also accepted after the subcommand
        sp.add_argument("--log-level", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = args.log_level or ("INFO" if args.command == "run" else "WARNING")  # ask/check: their own lines only
    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if isinstance(sys.stdout, io.TextIOWrapper):  # each line out at once: never glued to a log line
        sys.stdout.reconfigure(line_buffering=True)
    if args.command != "run":
        for name in ("visual_agent.mqtt", "amqtt", "httpx"):
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    if args.command == "cert":
        from .cert import cert_command

        try:
            return cert_command(args.names, args.cert, args.key, args.days, args.force)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "run":
            from .daemon import run_daemon

            return asyncio.run(run_daemon(config))
        if args.command == "url":
            return _url(config, args.host)
        if args.command == "ask":
            return asyncio.run(_ask(config, args))
        return asyncio.run(_check(config, args.timeout))
    except KeyboardInterrupt:
        return 130
    except VisualAgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


# --- url -------------------------------------------------------------------------------------------


def _url(config: Config, host: str | None) -> int:
    """Print the page URL (with `webrtc.auth_token`): the one place besides a terminal's `run` that shows the token."""
    from .page_link import page_url

    web = config.webrtc
    if web.port == 0:
        print("error: webrtc.port is 0, so the port is chosen at start: set a fixed webrtc.port", file=sys.stderr)
        return EXIT_USAGE
    if not web.auth_token:
        print("no webrtc.auth_token is set: the page needs none", file=sys.stderr)
    print(page_url(web, host=host))
    return EXIT_OK


# --- ask -------------------------------------------------------------------------------------------


async def _ask(config: Config, args: argparse.Namespace) -> int:
    from .mqtt import MqttMessager
    from .topics import Topics

    mqtt = config.mqtt
    if not mqtt.enabled:
        print("error: MQTT is disabled in this config (mqtt.enabled: false)", file=sys.stderr)
        return EXIT_USAGE
    cfg = mqtt.for_client()
    t = Topics(mqtt.prefix)
    qid = args.id or uuid.uuid4().hex[:12]
    client_id = f"visual-agent-ask-{uuid.uuid4().hex[:8]}"
    reply_topic = t.reply(client_id)
    messager = MqttMessager(cfg, client_id=client_id, persistent_session=False, name="ask")
    deadline = time.monotonic() + args.timeout
    try:
        await messager.start(timeout=min(args.timeout, mqtt.connect_timeout_s))
    except MessagingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    try:
        v5 = messager.protocol is MqttProtocol.V5
        answer_topic = reply_topic if v5 else t.answer
        await messager.subscribe(answer_topic)
        if args.stream:
            await messager.subscribe(t.partial)
        body: dict[str, Any] = {"id": qid, "question": args.question, "stream": bool(args.stream), "asked_at": time.time()}
        if args.source:
            body["source"] = args.source
        if args.frames:
            body["frames"] = args.frames
        correlation = secrets.token_bytes(16) if v5 else None  # unguessable: only the daemon's answer carries it
        await messager.publish(t.ask, json.dumps(body), response_topic=reply_topic if v5 else None,
                               correlation_data=correlation, wait=True)
        streamed = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            msg = await messager.next_message(remaining)
            try:
                data = json.loads(msg.payload)
            except ValueError:
                continue
            if not isinstance(data, dict) or data.get("id") != qid:
                continue
            if msg.topic == t.partial:
                if not args.json:
                    print(printable(str(data.get("delta", ""))), end="", flush=True)
                    streamed = True
                continue
            if "question" not in data:
                continue
            if msg.topic != answer_topic or (v5 and msg.correlation_data != correlation):
                continue  # not the daemon's answer to this question: someone else's, or forged
            return _print_answer(data, args.json, streamed)
    except TimeoutError:
        print(f"\nerror: no answer within {args.timeout:g} s (is `visual-agent run` running and connected to "
              f"{messager.host}:{messager.port}?)", file=sys.stderr)
        return EXIT_TIMEOUT
    finally:
        await messager.close()


def _print_answer(data: dict[str, Any], as_json: bool, streamed: bool) -> int:
    error = data.get("error")
    if as_json:
        print(printable(json.dumps(data, ensure_ascii=False, indent=2)))
    elif error:
        if streamed:
            print()
        error = error if isinstance(error, dict) else {"type": "unknown", "message": str(error)}
        print(printable(f"error ({error.get('type')}): {error.get('message')}"), file=sys.stderr)
    elif streamed:
        print()
    else:
        print(printable(str(data.get("text", ""))))
    if not as_json and (meta := answer_meta(data)):  # on stderr: stdout stays the answer alone, for scripts
        print(printable(f"({meta})"), file=sys.stderr)
    return EXIT_FAILED if error else EXIT_OK


def answer_meta(data: dict[str, Any]) -> str:
    """`model · latency · newest frame's age` of an answer, as far as it says them."""
    parts = [str(data["model"])] if data.get("model") else []
    if isinstance(data.get("latency_s"), (int, float)):
        parts.append(f"{data['latency_s']:.2f} s")
    ages = [f["age_s"] for f in data.get("frames") or [] if isinstance(f, dict) and isinstance(f.get("age_s"), (int, float))]
    if ages:
        parts.append(f"frame {min(ages):.2f} s old" if len(ages) == 1 else f"{len(ages)} frames, newest {min(ages):.2f} s old")
    return " · ".join(parts)


# --- check -----------------------------------------------------------------------------------------


async def _check(config: Config, timeout: float) -> int:
    ok = True
    print(f"config  OK    {config.path}")
    ok &= await _check_broker(config, timeout)
    ok &= await _check_llm(config, timeout)
    ok &= await _check_encoder(config)
    ok &= _check_http(config)
    ok &= _check_mcp(config)
    print("all checks passed" if ok else "some checks failed (see above)")
    return EXIT_OK if ok else EXIT_FAILED


async def _check_broker(config: Config, timeout: float) -> bool:
    from .mqtt import MqttMessager

    mqtt = config.mqtt
    if not mqtt.enabled:
        print("mqtt    SKIP  disabled (mqtt.enabled: false)")
        return True
    host, port = mqtt.broker_address()
    if mqtt.embedded:
        if _port_free(host, port):
            print(f"mqtt    OK    embedded broker: `visual-agent run` will start one on {host}:{port} (the port is free)")
            return True
        what = f"embedded broker port {host}:{port} is in use; "
    else:
        what = ""
    messager = MqttMessager(mqtt.for_client(), persistent_session=False, name="check")
    try:
        await messager.start(timeout=timeout)
    except MessagingError as exc:
        print(f"mqtt    FAIL  {what}{exc}")
        if mqtt.embedded:
            print("              another program holds the port: stop it, or set mqtt.embedded_port, or point mqtt.host at it")
        else:
            print("              check mqtt.host/port, credentials (VISUAL_AGENT__MQTT__PASSWORD) and TLS settings")
        return False
    finally:
        await messager.close(publish_offline=False)
    print(f"mqtt    OK    {what}{messager.host}:{messager.port} answers (MQTT {messager.protocol.value})")
    return True


async def _check_llm(config: Config, timeout: float) -> bool:
    try:
        from providers import create_provider, provider_kind

        llm = create_provider(config.llm)
        in_process = provider_kind(config.provider_name()).in_process
    except Exception as exc:
        print(f"llm     FAIL  {config.describe_llm()}: {exc}")
        return False
    try:
        models = await asyncio.wait_for(llm.preflight(), timeout)
    except Exception as exc:
        from webrtc.config import mask_url_secrets

        print(f"llm     FAIL  {config.describe_llm()}: {mask_url_secrets(f'{type(exc).__name__}: {exc}')}")
        if not in_process:
            print("              is the server running? set llm.base_url / llm.api_key (VISUAL_AGENT__LLM__API_KEY)")
        return False
    finally:
        await llm.aclose()
    if in_process:
        print(f"llm     OK    in-process {config.provider_name()} will load {', '.join(models)} at start (not loaded by check)")
        return True
    wanted = getattr(config.llm.config, "model_name", None)
    if wanted and models and wanted not in models:
        print(f"llm     FAIL  {config.describe_llm()}: model {wanted!r} not served; served: {', '.join(models)}")
        return False
    print(f"llm     OK    {config.describe_llm()}: serves {', '.join(models) or '(no list)'}")
    return True


async def _check_encoder(config: Config) -> bool:
    """How frames will reach the LLM; a mode the provider cannot take, or a model family without an embedding
    encoder, fails here as it would at start (nothing is loaded)."""
    from providers import create_provider

    from .encoding import FrameEncoding

    try:
        llm = create_provider(config.llm)
    except Exception:
        return True  # the llm line said why
    try:
        encoding = FrameEncoding.from_config(config.encoder, llm, provider_name=config.provider_name())
    except ValueError as exc:
        print(f"encoder FAIL  {exc}")
        return False
    finally:
        await llm.aclose()
    await encoding.aclose()
    what = "embeddings (the encoder loads at start, not by check)" if encoding.uses_embeddings else "JPEG"
    print(f"encoder OK    frames go to the LLM as {what}")
    return True


def _check_http(config: Config) -> bool:
    web = config.webrtc
    if web.port == 0 or _port_free(web.host, web.port):
        scheme = "https" if web.tls_certfile else "http"
        print(f"page    OK    will be served on {scheme}://{web.host}:{web.port}/"
              f"{' (token required)' if web.auth_token else ''}")
        return True
    print(f"page    WARN  {web.host}:{web.port} is in use (a running daemon?); `run` would fail to bind it")
    return True


def _check_mcp(config: Config) -> bool:
    """MCP on: the SDK must import (the daemon would not start without it)."""
    if not config.mcp.enabled:
        print("mcp     SKIP  disabled (mcp.enabled: false)")
        return True
    from .mcp_server import McpUnavailableError, load_service

    try:
        load_service()
    except McpUnavailableError as exc:
        print(f"mcp     FAIL  {exc}")
        return False
    web = config.webrtc_config()
    print(f"mcp     OK    tools at {'https' if web.tls_certfile else 'http'}://{web.host}:{web.port}{config.mcp.path}"
          f"{' (token required)' if web.auth_token else ''}")
    return True


def _port_free(host: str, port: int) -> bool:
    """Whether `run` could bind it: with SO_REUSEADDR as asyncio's server does, so a just-stopped daemon's
    connections in TIME_WAIT do not count as "in use"."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
