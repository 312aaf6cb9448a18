"""The CRI socket's limits as Python's grpcio (gRPC's C core) meets them.

Usage: cri_limits.py STUBS_DIR SOCKET NAME LOG_DIR

Sends, with the client's own limits raised out of the way: a RunPodSandbox of
17 MiB (over the socket's 16 MiB), one carrying a 1 MiB annotation (over the
512 KiB of labels and annotations an object may have), and a pod with 10,000
labels, which it finds again by one of them and removes. Prints one JSON
object with what caissond answered.
"""

import json
import sys

STUBS, SOCKET, NAME, LOG_DIR = sys.argv[1:5]
sys.path.insert(0, STUBS)

import grpc  # noqa: E402
import v1_pb2 as cri  # noqa: E402
import v1_pb2_grpc as cri_grpc  # noqa: E402

BIG = 64 << 20


def pod_config(name, labels=None, annotations=None):
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, uid="uid-" + name, namespace="default"),
        hostname=name,
        log_directory=LOG_DIR,
        labels=labels or {},
        annotations=annotations or {},
        linux=cri.LinuxPodSandboxConfig(),
    )


def refusal(call):
    try:
        call()
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}
    return {"code": "OK"}


def main():
    options = [
        ("grpc.max_send_message_length", BIG),
        ("grpc.max_receive_message_length", BIG),
    ]
    out = {"grpcio": grpc.__version__}
    with grpc.insecure_channel("unix://" + SOCKET, options=options) as ch:
        rt = cri_grpc.RuntimeServiceStub(ch)
        huge = pod_config(NAME + "-huge", annotations={"blob": "x" * (17 << 20)})
        out["over_message_limit"] = refusal(
            lambda: rt.RunPodSandbox(cri.RunPodSandboxRequest(config=huge), timeout=60)
        )
        fat = pod_config(NAME + "-fat", annotations={"blob": "x" * (1 << 20)})
        out["over_metadata_limit"] = refusal(
            lambda: rt.RunPodSandbox(cri.RunPodSandboxRequest(config=fat), timeout=60)
        )
        labels = {"example.com/label-%d" % i: "value-%d" % i for i in range(10000)}
        many = pod_config(NAME + "-many", labels=labels)
        pod = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=many), timeout=60).pod_sandbox_id
        status = rt.PodSandboxStatus(
            cri.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=60
        ).status
        out["labels_kept"] = len(status.labels)
        listed = rt.ListPodSandbox(
            cri.ListPodSandboxRequest(
                filter=cri.PodSandboxFilter(
                    label_selector={"example.com/label-4242": "value-4242"}
                )
            ),
            timeout=60,
        ).items
        out["found_by_label"] = [p.id == pod for p in listed]
        rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        out["version_after"] = rt.Version(cri.VersionRequest(version="v1"), timeout=20).runtime_name
    print(json.dumps(out))


if __name__ == "__main__":
    main()
