#!/usr/bin/env python3
"""Call gpukilld from Python with the stubs generated from proto/ (./generate.sh):
list the GPUs, watch three snapshots, and kill a process as yourself.

    pip install -r requirements.txt && ./generate.sh
    python3 example.py                 # list, then watch three snapshots
    python3 example.py --kill 12345    # ... then ask the daemon to kill PID 12345

Over the Unix socket the daemon knows who you are from the kernel (the socket's peer
credentials): there is nothing to log in with, and you may kill your own processes only
(root and the admin group: anyone's but protected ones). Plain default channel options
work; no `grpc.default_authority` is needed.
"""

import argparse
import itertools
import os
import sys

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))


def default_socket():
    """Where gpukillctl looks: $GPUKILL_SOCKET, a per-user daemon's socket, the system one."""
    if "GPUKILL_SOCKET" in os.environ:
        return os.environ["GPUKILL_SOCKET"]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if os.geteuid() != 0 and runtime:
        per_user = os.path.join(runtime, "gpukill", "gpukilld.sock")
        if os.path.exists(per_user):
            return per_user
    return "/run/gpukill/gpukilld.sock"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default=default_socket(), help="gpukilld's Unix socket")
    parser.add_argument("--stubs", default=os.path.join(HERE, "generated"),
                        help="where generate.sh wrote the stubs")
    parser.add_argument("--kill", type=int, metavar="PID", help="a process to kill as yourself")
    args = parser.parse_args()

    sys.path.insert(0, args.stubs)
    from gpukill.v1 import gpukill_pb2, gpukill_pb2_grpc

    with grpc.insecure_channel(f"unix:{args.socket}") as channel:
        daemon = gpukill_pb2_grpc.GpuKillServiceStub(channel)

        snapshot = daemon.List(gpukill_pb2.ListRequest(), timeout=10).snapshot
        print(f"host {snapshot.host}, snapshot {snapshot.sequence}"
              + (f", stale: {snapshot.stale_reason}" if snapshot.stale else ""))
        for gpu in snapshot.gpus:
            used = gpu.memory_used_bytes // 2**20 if gpu.HasField("memory_used_bytes") else "-"
            util = gpu.utilization_gpu_pct if gpu.HasField("utilization_gpu_pct") else "-"
            print(f"GPU {gpu.index}: {gpu.name} {used} MiB used, {util}% busy")
        for process in snapshot.processes:
            print(f"  pid {process.pid} on GPU {process.gpu_index}: {process.user} {process.name}")

        # Watch sends the latest snapshot at once, then each new one; cancel when done.
        stream = daemon.Watch(gpukill_pb2.WatchRequest())
        for message in itertools.islice(stream, 3):
            update = message.snapshot
            print(f"watch: snapshot {update.sequence}, {len(update.gpus)} GPUs, "
                  f"{len(update.processes)} processes, {message.skipped} skipped")
        stream.cancel()

        if args.kill is not None:
            try:
                answer = daemon.Kill(gpukill_pb2.KillRequest(pid=args.kill), timeout=30)
            except grpc.RpcError as error:
                print(f"kill {args.kill}: {error.code().name}: {error.details()}")
                return 1
            for result in answer.results:
                outcome = gpukill_pb2.KillOutcome.Name(result.outcome)
                print(f"kill {result.target.pid}: {outcome.removeprefix('KILL_OUTCOME_')}"
                      + (f" ({result.reason})" if result.reason else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
