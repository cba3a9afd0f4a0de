#!/usr/bin/env python3
"""Call gpukilld from Python without generated stubs: the standard health check, then
server reflection for the services and their message types, then List and three Watch
snapshots through requests built from the reflected descriptors.

    pip install -r requirements.txt
    python3 reflection_client.py [--socket PATH] [--authority NAME]

This is what generic tools (grpcurl, Postman, Kubernetes gRPC probes) do; the daemon serves
grpc.health.v1.Health and grpc.reflection.v1 / v1alpha for them. Over the Unix socket
every read is open to every local user, as it is to gpukillctl.
"""

import argparse
import itertools
import os
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def list_services_v1(channel):
    """The service list from grpc.reflection.v1. Its messages are the v1alpha ones on the
    wire, so grpcio-reflection's v1alpha classes encode and decode them."""
    info = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    answers = info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    return sorted(service.name for answer in answers
                  for service in answer.list_services_response.service)


def node_service(pool, services):
    """The per-node gpukill service: the one with List and Watch (a coordinator's Cluster
    service has a List too, of every node)."""
    for name in services:
        if name.startswith("gpukill."):
            service = pool.FindServiceByName(name)
            if {"List", "Watch"} <= set(service.methods_by_name):
                return service
    raise SystemExit(f"no gpukill service has List and Watch: {services}")


def call_builders(channel, method, path, stream):
    """A callable for `method` with request and response classes made from its descriptors."""
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    make = channel.unary_stream if stream else channel.unary_unary
    return request_class, make(path, request_serializer=request_class.SerializeToString,
                               response_deserializer=response_class.FromString)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default=os.environ.get("GPUKILL_SOCKET",
                                                           "/run/gpukill/gpukilld.sock"))
    parser.add_argument("--authority", help="set grpc.default_authority (not needed)")
    args = parser.parse_args()
    options = [("grpc.default_authority", args.authority)] if args.authority else []

    with grpc.insecure_channel(f"unix:{args.socket}", options=options) as channel:
        reflection = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(reflection.get_services())
        print("services (v1alpha):", " ".join(services))
        print("services (v1):", " ".join(list_services_v1(channel)))

        health = health_pb2_grpc.HealthStub(channel)
        for name in [""] + [s for s in services if s.startswith("gpukill.")]:
            answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            print(f"health {name or '(server)'}: "
                  f"{health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)}")

        pool = descriptor_pool.DescriptorPool(reflection)
        service = node_service(pool, services)
        method = service.methods_by_name["List"]
        path = f"/{service.full_name}/{method.name}"
        request_class, list_call = call_builders(channel, method, path, stream=False)
        answer = list_call(request_class(), timeout=10)
        snapshot = answer.snapshot
        print(f"list: {path} host {snapshot.host}, {len(snapshot.gpus)} GPUs, "
              f"{len(snapshot.processes)} processes")

        method = service.methods_by_name["Watch"]
        path = f"/{service.full_name}/{method.name}"
        request_class, watch_call = call_builders(channel, method, path, stream=True)
        stream = watch_call(request_class(), timeout=60)
        for update in itertools.islice(stream, 3):
            # Whatever the streamed message is called, it carries (or is) the snapshot.
            snapshot = update.snapshot if "snapshot" in update.DESCRIPTOR.fields_by_name else update
            print(f"watch: {path} snapshot {snapshot.sequence}, {len(snapshot.gpus)} GPUs")
        stream.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
