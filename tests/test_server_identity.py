"""Two servers given one id (an operator's copy-paste): neither may act as the other. Each
leads only if it holds the lock alone, and work for an agent on either reaches it."""

from __future__ import annotations

import asyncio

from conftest import AgentProcess, deploy, final, invoke, start_agent, wait_for

from hodei.plugin.models import Status
from hodei.plugin.server import ControlPlane

SMALL = ["--cpu-millicores", "4000", "--memory-mb", "4096", "--job-slots", "4"]


async def test_two_servers_with_one_id_share_neither_leadership_nor_inbox(
    plane: ControlPlane, agents: list[AgentProcess]
) -> None:
    twin = ControlPlane(plane.settings)
    await twin.start()
    try:
        assert twin.settings.server_id == plane.settings.server_id
        await wait_for(lambda: plane.leader.is_leader or twin.leader.is_leader, 10)
        for _ in range(3):  # renewals included
            # Never one fencing token for both (a stalled loop may let one believe it
            # still leads a moment after the other took over: the token tells them apart).
            held = [t for t in (plane.leader.token, twin.leader.token) if t is not None]
            assert len(set(held)) == len(held), held
            await asyncio.sleep(plane.settings.leader_ttl_s / 2)
        leader, follower = (plane, twin) if plane.leader.is_leader else (twin, plane)
        # The agent streams to the follower: the leader's every assignment goes through the
        # follower's inbox, which the leader must not read.
        await start_agent(leader, agents, "w1", *SMALL, port=follower.port)
        fn = await deploy(leader, "echo", command=["cat"], max_retries=3)
        ids = [await invoke(leader, fn, str(i).encode()) for i in range(12)]
        for i, inv_id in enumerate(ids):
            await final(leader, inv_id)
            inv, output = await leader.data.invocations.result(inv_id)
            assert inv.status is Status.SUCCEEDED and output == str(i).encode()
            assert inv.attempt == 1, f"{inv_id}: attempt {inv.attempt} (an assignment was lost)"
    finally:
        await twin.stop()
