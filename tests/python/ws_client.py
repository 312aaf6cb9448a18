"""Drives Caisson's WebSocket streaming server with the Python `kubernetes`
package's own client (`kubernetes.stream.ws_client`, PyPI): an
implementation of Kubernetes' channel protocols independent of ours.

    ws_client.py exec URL [--protocol P] [--resize WxH]... [--wait-stdout TEXT]
                 [--stdin TEXT]... [--close-stdin] [--timeout S]
    ws_client.py portforward URL --port PORT[:PAYLOAD]... [--protocol P] [--timeout S]
                 [--read-to-end]

exec (and attach): connects with `Sec-WebSocket-Protocol: P` (the
package's default, `v5.channel.k8s.io,v4.channel.k8s.io`, without it),
sends the resizes, waits for TEXT on stdout if asked, sends stdin, closes
stdin (v5 only), then reads until the server closes. Prints JSON:
{"protocol", "stdout", "stderr", "error" (the error channel's text),
"status" (it as JSON, or null), "returncode" (the package's reading of the
status, or null), "closed"}.

portforward: opens the ports with `PortForward`, and for each port, in a
thread of its own, sends PAYLOAD and reads until as many bytes came back or
the port closed (with --read-to-end: until the port closed). Prints JSON: {"ports": {"PORT": {"received", "error"}}}.
"""

import argparse
import json
import socket
import sys
import threading
import time

from kubernetes.client import Configuration
from kubernetes.stream import ws_client

STDOUT, STDERR, ERROR = 1, 2, 3


def headers(protocol):
    if protocol is None:
        return None
    return {"sec-websocket-protocol": protocol}


class Collected:
    """Everything the server sent, per channel."""

    def __init__(self, client):
        self.client = client
        self.channels = {STDOUT: "", STDERR: ""}

    def pump(self, timeout):
        self.client.update(timeout=timeout)
        for channel in self.channels:
            data = self.client.read_channel(channel)
            if data:
                self.channels[channel] += data


def run_exec(args):
    deadline = time.monotonic() + args.timeout
    client = ws_client.WSClient(Configuration(), args.url, headers(args.protocol), capture_all=True)
    got = Collected(client)
    for size in args.resize:
        width, height = (int(n) for n in size.split("x"))
        client.write_channel(ws_client.RESIZE_CHANNEL, json.dumps({"Width": width, "Height": height}))
    if args.wait_stdout:
        while args.wait_stdout not in got.channels[STDOUT]:
            left = deadline - time.monotonic()
            if left <= 0 or not client.is_open():
                sys.exit(f"no {args.wait_stdout!r} on stdout: {got.channels}")
            got.pump(left)
    for data in args.stdin:
        client.write_stdin(data)
    if args.close_stdin:
        client.close_channel(ws_client.STDIN_CHANNEL)
    while client.is_open():
        left = deadline - time.monotonic()
        if left <= 0:
            sys.exit(f"the server did not close within {args.timeout}s: {got.channels}")
        got.pump(left)
    got.pump(0)
    # Left in the client, whose `returncode` reads it.
    error = client.peek_channel(ERROR)
    try:
        status = json.loads(error) if error else None
    except ValueError:
        status = None
    try:
        returncode = client.returncode if status is not None else None
    except Exception:  # noqa: BLE001 - report, the test decides
        returncode = None
    print(json.dumps({
        "protocol": client.subprotocol,
        "stdout": got.channels[STDOUT],
        "stderr": got.channels[STDERR],
        "error": error,
        "status": status,
        "returncode": returncode,
        "closed": not client.is_open(),
    }))


def forward_one(pf, port, payload, timeout, results, to_end):
    sock = pf.socket(port)
    sock.settimeout(timeout)
    received = b""
    try:
        if payload:
            sock.sendall(payload)
        while to_end or len(received) < len(payload) or not payload:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except (OSError, socket.timeout) as error:
        received += f"<{type(error).__name__}>".encode()
    finally:
        sock.close()
    results[str(port)] = {"received": received.decode("utf-8", "replace"), "error": pf.error(port)}


def run_portforward(args):
    specs = []
    for spec in args.port:
        port, _, payload = spec.partition(":")
        specs.append((int(port), payload.encode()))
    websocket = ws_client.create_websocket(Configuration(), args.url, headers(args.protocol))
    pf = ws_client.PortForward(websocket, [port for port, _ in specs])
    results = {}
    threads = [
        threading.Thread(target=forward_one, args=(pf, port, payload, args.timeout, results, args.read_to_end))
        for port, payload in specs
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({"ports": results}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["exec", "portforward"])
    parser.add_argument("url")
    parser.add_argument("--protocol")
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--stdin", action="append", default=[])
    parser.add_argument("--close-stdin", action="store_true")
    parser.add_argument("--resize", action="append", default=[])
    parser.add_argument("--wait-stdout")
    parser.add_argument("--port", action="append", default=[])
    parser.add_argument("--read-to-end", action="store_true",
                        help="portforward: read each port until it closes (an HTTP/1.0 answer), not just as many bytes as were sent")
    args = parser.parse_args()
    if args.mode == "exec":
        run_exec(args)
    else:
        run_portforward(args)


if __name__ == "__main__":
    main()
