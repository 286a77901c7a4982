"""An agent's job handling without its connection, for lambda instance tests: assignments
go into the process manager as the server sends them; results, logs and pools come out as
the server would receive them."""

from __future__ import annotations

import asyncio

from hodei.agent.instance import Launcher
from hodei.agent.instances import InstancePool
from hodei.agent.process_instances import share_uids
from hodei.agent.process_manager import ProcessManager
from hodei.agent.process_runtime import ProcessRuntime
from hodei.agent.runtime import Runtime
from hodei.proto import hodei_pb2 as pb


class Harness:
    """An agent's job handling without its connection: what the server would receive."""

    def __init__(
        self,
        launcher: Launcher,
        capacity_mb: int = 8192,
        reserved: int = 0,
        runtimes: dict[str, Runtime] | None = None,
    ) -> None:
        self.messages: list[pb.AgentMessage] = []
        self.results: dict[str, pb.JobResult] = {}
        self.done: dict[str, asyncio.Event] = {}
        self.reserved = reserved
        self.pool = InstancePool(
            {launcher.name: launcher},
            capacity_mb,
            lambda: self.reserved,
            default_idle_s=60,
        )
        self.manager = ProcessManager(
            runtimes or {},
            self.messages.append,
            self._result,
            "w",
            lambda_runtimes={launcher.name: self.pool.runtime(launcher.name)},
        )
        process = (runtimes or {}).get("process")
        if isinstance(process, ProcessRuntime):
            share_uids(process.sandbox, self.pool)  # as the agent does

    def _result(self, result: pb.JobResult) -> None:
        self.results[result.invocation_id] = result
        self.done.setdefault(result.invocation_id, asyncio.Event()).set()

    def assign(self, job: pb.AssignJobRequest) -> None:
        self.done[job.invocation_id] = asyncio.Event()  # a new attempt waits for its own end
        self.results.pop(job.invocation_id, None)
        self.manager.start(job)

    async def result(self, invocation_id: str, within: float = 30) -> pb.JobResult:
        await asyncio.wait_for(self.done[invocation_id].wait(), within)
        return self.results[invocation_id]

    async def invoke(self, job: pb.AssignJobRequest, within: float = 30) -> pb.JobResult:
        self.assign(job)
        return await self.result(job.invocation_id, within)

    def logs(self, invocation_id: str) -> list[str]:
        return [
            line.line
            for m in self.messages
            if m.WhichOneof("kind") == "log" and m.log.invocation_id == invocation_id
            for line in m.log.lines
        ]

    def pools(self) -> dict[str, tuple[int, int, int]]:
        return {
            f"{p.function}@{p.revision}": (p.idle, p.busy, p.starting) for p in self.pool.pools()
        }
