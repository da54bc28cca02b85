#!/usr/bin/env python3
"""Wait until a chital daemon answers grpc.health.v1 Check with SERVING, over TLS.

Run by the chital roles with the Python of a chital venv (grpcio and grpcio-health-checking are
dependencies of both daemons):

    chital_grpc_health.py HOST:PORT --ca CA [--cert CRT --key KEY] [--timeout S]

An agent accepts only the controller's certificate, so its check runs on the controller's host with
the controller's bundle, at the address the controller dials: what passes here is what the
controller will see. Exit status 0 when SERVING; 1 with the last error on stderr at the deadline.
"""

import argparse
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    with open(args.ca, "rb") as f:
        ca = f.read()
    cert = key = None
    if args.cert and args.key:
        with open(args.cert, "rb") as f:
            cert = f.read()
        with open(args.key, "rb") as f:
            key = f.read()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    deadline = time.monotonic() + args.timeout
    last = "no answer"
    while True:
        with grpc.secure_channel(args.address, credentials) as channel:
            try:
                stub = health_pb2_grpc.HealthStub(channel)
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    print(f"{args.address}: SERVING")
                    return 0
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
        if time.monotonic() >= deadline:
            print(f"{args.address}: not healthy after {args.timeout:g} s: {last}", file=sys.stderr)
            return 1
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
