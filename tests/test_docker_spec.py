"""What the docker runtime asks the engine for, checked without an engine (no GPU here)."""

from __future__ import annotations

import struct
from pathlib import Path

import docker

from hodei.agent.docker_spec import DockerOptions, FrameReader, container_request, job_of
from hodei.agent.resources import gpu_count
from hodei.proto import hodei_pb2 as pb

# Building a HostConfig needs only the API version, not an engine.
CLIENT = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41")


def job(**changes: object) -> pb.AssignJobRequest:
    base = pb.AssignJobRequest(
        invocation_id="inv-1",
        attempt=2,
        function="resize",
        runtime="docker",
        image="acme/resize:3",
        command=["resize", "--fast"],
        env={"MODE": "x"},
        resources=pb.Resources(cpu_millicores=1500, memory_mb=256, gpus=0),
        timeout_s=30,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    base.MergeFrom(pb.AssignJobRequest(**changes))  # type: ignore[arg-type]
    return base


def request(j: pb.AssignJobRequest) -> dict[str, object]:
    return container_request(j, "w7", "mark7", DockerOptions(), 123456, CLIENT.create_host_config)


def test_limits_labels_and_environment() -> None:
    r = request(job())
    host = r["host_config"]
    assert isinstance(host, dict)
    assert host["NanoCpus"] == 1_500_000_000
    assert host["Memory"] == 256 * 1024 * 1024 and host["MemorySwap"] == 256 * 1024 * 1024
    assert host["PidsLimit"] == 256
    assert r["labels"] == {
        "hodei.invocation": "inv-1",
        "hodei.attempt": "2",
        "hodei.worker": "w7",
        "hodei.agent_mark": "mark7",
        "hodei.function": "resize",
        "hodei.deadline_ms": "123456",
    }
    env = r["environment"]
    assert isinstance(env, dict)
    assert env["MODE"] == "x" and env["HODEI_INVOCATION_ID"] == "inv-1"
    assert env["TRACEPARENT"].startswith("00-0af7")
    assert r["command"] == ["resize", "--fast"] and r["stdin_open"] is True


def test_hardened_by_default_and_network_on_request() -> None:
    host = request(job())["host_config"]
    assert isinstance(host, dict)
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["ReadonlyRootfs"] is True
    assert host["Tmpfs"]["/tmp"].startswith("rw,nosuid,nodev,mode=1777,size=64m")
    assert host["NetworkMode"] == "none"
    assert request(job())["user"] == "65534:65534"
    opened = request(job(network=True))["host_config"]
    assert isinstance(opened, dict) and opened["NetworkMode"] == "bridge"


def test_gpus_become_a_device_request() -> None:
    host = request(job())["host_config"]
    assert isinstance(host, dict) and "DeviceRequests" not in host
    host = request(job(resources=pb.Resources(gpus=2)))["host_config"]
    assert isinstance(host, dict)
    [device] = host["DeviceRequests"]
    assert device["Count"] == 2 and device["Capabilities"] == [["gpu"]]


def test_workers_count_their_gpus(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    assert gpu_count(str(tmp_path)) == 2
    assert gpu_count(str(tmp_path / "none")) == 0


def test_job_of_a_leftover_container() -> None:
    labels = request(job())["labels"]
    assert isinstance(labels, dict)
    rebuilt = job_of(labels, "acme/resize:3", now_ms=123456 - 4000)
    assert (rebuilt.invocation_id, rebuilt.attempt, rebuilt.function) == ("inv-1", 2, "resize")
    assert rebuilt.runtime == "docker" and rebuilt.timeout_s == 4.0


def test_frame_reader_demultiplexes_split_frames() -> None:
    out: list[bytes] = []
    err: list[bytes] = []
    stream = b"".join(
        struct.pack(">BxxxI", kind, len(data)) + data
        for kind, data in ((1, b"hello "), (2, b"oops\n"), (1, b"world"), (1, b""))
    )
    reader = FrameReader(out.append, err.append)
    for i in range(0, len(stream), 3):  # frames cut anywhere, headers included
        reader.feed(stream[i : i + 3])
    assert b"".join(out) == b"hello world" and err == [b"oops\n"]
    assert not reader.buffer
