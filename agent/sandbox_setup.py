"""The agent's spawner as its settings say: sandboxed or not, its uids, limits and folders,
and its job slots' slot processes prepared in the background."""

from __future__ import annotations

import logging
import os

from hodei.agent.identity import remember_uid, remembered_uid
from hodei.agent.sandbox import Sandbox
from hodei.agent.sandbox_types import SandboxConfig, own_installation
from hodei.agent.settings import AgentSettings
from hodei.errors import ConfigError

log = logging.getLogger(__name__)


def agent_sandbox(settings: AgentSettings, mark: str, job_slots: int) -> Sandbox:
    """The agent's spawner as its settings say. Raises ConfigError when it cannot sandbox,
    or would run functions as root without ``process_allow_root``."""
    mode = settings.process_sandbox
    if mode not in ("on", "off"):
        raise ConfigError(f"process_sandbox: {mode!r} is neither 'on' nor 'off'")
    if mode == "off" and os.geteuid() == 0 and not settings.process_allow_root:
        raise ConfigError(
            "the process runtime would run functions unsandboxed as root: use "
            "--process-sandbox on, run the agent as another user, or --process-allow-root"
        )
    config = SandboxConfig(
        sandboxed=mode == "on",
        mark=mark,
        uid_base=settings.process_uid_base,
        uid_count=settings.process_uid_count or 2 * job_slots,
        uid_preferred=remembered_uid(settings.state_dir, settings.worker_id),
        allow_root=settings.process_allow_root,
        pids_max=settings.process_pids_max,
        tmpfs_mb=settings.process_tmpfs_mb,
        private_dirs=settings.process_private_dirs,
        hidden_paths=settings.process_hidden_paths,
        cgroup_root=settings.process_cgroup_root,
        exposed_paths=(*own_installation(), *settings.process_exposed_paths),
    )
    if 0 < settings.process_uid_count < job_slots:
        log.warning(
            "process_uid_count %d < job slots %d: functions beyond it fail to start",
            settings.process_uid_count,
            job_slots,
        )
    sandbox = Sandbox.start(config)
    if sandbox.uids:
        remember_uid(settings.state_dir, settings.worker_id, sandbox.uids[0])
    sandbox.prepare(job_slots)
    return sandbox
