"""The help text of every setting flag of ``hodei server|agent|gateway``, by field name.

The settings dataclasses live with their processes; their flags are generated from the
fields, and each flag's help comes from here (``<process>.<field>`` first, for a field
that means something different in one process, then ``<field>``). A test checks that every
field of every settings class has one.
"""

from __future__ import annotations

HELP: dict[str, str] = {
    # Shared
    "redis_url": "the Redis every server and gateway shares (redis://[:password@]host:port/db)",
    "key_prefix": "prefix of every Redis key (several Hodeis can share one Redis)",
    "log_level": "debug, info, warning or error",
    "event_loop": "auto (uvloop where it can be imported), uvloop or asyncio (the standard "
    "library's)",
    "metrics_port": "port of the Prometheus /metrics endpoint (-1 = off)",
    "heartbeat_interval_s": "seconds between an agent's heartbeats (servers and agents agree)",
    "max_queue": "queued invocations at most; beyond, submits get 429 (servers and gateways agree)",
    "ageing_s": "seconds of waiting worth one priority level, so low priority never starves",
    "events_maxlen": "domain events kept in the Redis stream",
    "max_queue_bytes": "payload bytes queued at most; beyond, submits get 429",
    "idempotency_ttl_s": "seconds an Idempotency-Key keeps answering with its first invocation",
    "log_bytes_per_invocation": "log bytes kept per invocation (then a truncation marker)",
    "log_lines_kept": "log lines kept per invocation (the last ones)",
    "retention_s": "seconds finished invocations (record, result, logs) are kept; 0 = forever",
    "consul_addr": "Consul agent address (else CONSUL_HTTP_ADDR); Consul is off without one",
    "consul_token": "Consul ACL token (else CONSUL_HTTP_TOKEN)",
    "advertise_address": "the address registered in Consul (default: the listening address)",
    "consul_check_interval_s": "seconds between Consul's health checks of this process",
    "consul_deregister_after_s": "Consul removes the service after failing its check this long",
    "consul_register": "register this process in Consul (off under Nomad, whose jobspec does it)",
    # Server
    "grpc_host": "address the gRPC WorkerService listens on",
    "grpc_port": "port of the gRPC WorkerService the agents connect to",
    "server_id": "this server's name in logs and Consul; who leads and the route to its agents "
    "are named by its process: this id, '#', a suffix new at each start (default: host + random)",
    "agent_tokens": "a token:worker-id entry binding an agent's token to its worker (token:* = a "
    "fleet token; repeatable); none and no TLS = agents are not authenticated",
    "agent_tokens_file": "a file with one token:worker-id entry per line",
    "grpc_health_port": "with TLS: a plaintext port serving grpc.health.v1 alone, for Consul and "
    "Nomad checks (-1 = none)",
    "operator_tokens": "a token for the operator RPCs: AssignJob, GetWorkerStatus of any worker "
    "(repeatable)",
    "operator_tokens_file": "a file with one operator token per line",
    "operator_names": "the common name of an operator's client certificate (repeatable)",
    "missed_heartbeats": "a worker missing this many heartbeats in a row turns Unhealthy",
    "failed_after_s": "an Unhealthy worker is Failed and dropped after this many seconds",
    "lease_ttl_s": "an assignment not renewed for this long is taken back and run again",
    "leader_ttl_s": "leader lock TTL: a standby server takes over within it",
    "retry_base_s": "first retry delay after a failure (doubles each time, with jitter)",
    "retry_cap_s": "longest retry delay",
    "scheduler_batch": "invocations the scheduler looks at per round",
    "max_candidates": "feasible workers scored per placement decision",
    "max_scan": "workers looked at per placement decision",
    "gauge_interval_s": "seconds between recomputing the queue and fleet gauges",
    "consul_session_ttl_s": "TTL of the Consul leader session (10 s to 24 h)",
    "consul_lock_delay_s": "Consul lock delay after a leader's session ends",
    "consul_leader_key": "the Consul KV key of the leader lock",
    # Agent
    "server": "server address(es), host:port, comma-separated; none = found in Consul",
    "token": "token sent to the server (bound to this worker id in its agent_tokens)",
    "tls_server_name": "the name the server's certificate must carry (default: the address's host)",
    "worker_id": "this worker's id (default: the host name); unique in the fleet",
    "state_dir": "folder of the agent's mark, which tells its leftovers from other agents'",
    "cpu_millicores": "CPU capacity offered, in millicores (0 = detect)",
    "memory_mb": "memory capacity offered, in MB (0 = detect)",
    "gpus": "GPUs offered (0 = count /dev/nvidiaN)",
    "job_slots": "invocations run at once at most (0 = from the CPUs)",
    "labels": "a KEY=VALUE label functions can require (repeatable)",
    "runtimes": "a runtime to offer: process or docker (repeatable)",
    "docker_host": "the Docker engine (default: DOCKER_HOST or the local socket)",
    "docker_user": "uid:gid containers run as",
    "docker_tmpfs_mb": "size of each container's /tmp, in MB",
    "docker_pids_limit": "processes a container may have at most",
    "docker_ping_interval_s": "seconds between checks that the Docker engine answers",
    "docker_pull_failure_ttl_s": "seconds an image that failed to pull fails fast",
    "metrics_host": "address the /metrics endpoint listens on",
    "health_port": "port of the grpc.health.v1 service for Nomad/Consul checks (-1 = off)",
    "drain_grace_s": "on SIGTERM: seconds running work may take before it is handed back",
    "drain_handback_s": "on SIGTERM, after the grace: seconds to hand work back and say goodbye",
    "nomad_mhz_per_core": "under Nomad: MHz of one core (0 = what psutil says)",
    "nomad_agent_cpu_mhz": "under Nomad: MHz of the task's reservation the agent keeps for itself",
    "nomad_agent_memory_mb": "under Nomad: MB of the task's reservation the agent keeps for itself",
    "output_cap_bytes": "largest function output (stdout) kept, in bytes",
    "log_batch_lines": "log lines sent to the server in one batch at most",
    "log_flush_s": "seconds log lines wait to be batched",
    "reconnect_base_s": "first delay before reconnecting to a server (doubles, with jitter)",
    "reconnect_cap_s": "longest delay between reconnection attempts",
    "result_resend_s": "seconds before a result the server has not acknowledged is sent again",
    "consul_ttl_heartbeats": "the Consul TTL check's TTL, in heartbeat intervals",
    "nomad_identity": "advertise the Nomad node (datacenter, node, class, meta) as labels",
    "token_file": "read the agent's gRPC token from this file (keeps it out of the environment)",
    "process_sandbox": "on: each process function under its own uid, cgroup and namespaces "
    "(needs root); off: unsandboxed, as the agent's user (an explicit choice)",
    "process_uid_base": "first uid the agent may claim for its functions (one per concurrent "
    "function)",
    "process_uid_count": "function uids this agent claims (0 = one per job slot)",
    "process_allow_root": "let functions run as root (a uid range with 0, or an unsandboxed "
    "root agent)",
    "process_pids_max": "processes and threads one function may have (RLIMIT_NPROC, cgroup "
    "pids.max)",
    "process_tmpfs_mb": "size of each private tmpfs folder of a function (/tmp...)",
    "process_private_dirs": "a folder each function gets as a private, fresh tmpfs (repeatable)",
    "process_hidden_paths": "a path functions must not see, e.g. a container engine socket "
    "(repeatable)",
    "process_cgroup_root": "where function cgroups go (default <cgroup v2 mount>/hodei; off = "
    "rlimits only)",
    "process_exposed_paths": "a folder functions may read although an ancestor is closed to "
    "their uid (repeatable)",
    "lambda_region": "the AWS_REGION lambda-interface functions see",
    "lambda_idle_s": "seconds an idle lambda instance is kept when its warm.idle_s is 0",
    # Gateway
    "host": "address the HTTP API listens on",
    "port": "port of the HTTP API",
    "metrics_token": "bearer token /metrics requires (a read API token works too); empty = "
    "/metrics open",
    "max_payload_bytes": "largest invocation payload; larger ones get 413",
    "default_wait_s": "seconds a synchronous invoke waits when ?wait= is not given",
    "max_wait_s": "longest ?wait= a synchronous invoke may ask for",
    "api_tokens": "a token:scope+scope entry (scopes admin, invoke, read; repeatable)",
    "api_tokens_file": "a file with one token:scope+scope entry per line",
    "job_images": "an image pattern (shell-style, e.g. registry/jobs/*) invoke tokens may run "
    "as one-off docker jobs; anything else needs admin (repeatable)",
    "invoke_job_budget_s": "seconds of a worker an invoke token's one-off job may take over "
    "all its attempts, timeout_s x (1 + max_retries), submitted or replayed (403 beyond)",
    "callback_timeout_s": "seconds a callback POST may take",
    "callback_allow": "a network (CIDR) or host name callbacks may reach besides public "
    "addresses, e.g. 10.1.0.0/16 (repeatable; metadata addresses never)",
    "callback_attempts": "attempts to deliver a callback",
    "callback_base_s": "first delay between callback attempts (doubles)",
    "callback_cap_s": "longest delay between callback attempts",
    "max_streams": "open event and log streams (follow) at most, in all",
    "max_streams_per_caller": "open event and log streams at most per token (or address)",
}

BY_PROCESS: dict[str, str] = {
    "server.tls_ca_file": "the CA (PEM) that signs agents' client certificates; with "
    "tls_cert_file and tls_key_file, gRPC is served over TLS only",
    "server.tls_cert_file": "this server's certificate (PEM, with its chain)",
    "server.tls_key_file": "this server's private key (PEM)",
    "server.insecure": "accept unauthenticated agents on an address beyond loopback",
    "agent.tls_ca_file": "the CA (PEM) that signed the server's certificate; turns on TLS",
    "agent.tls_cert_file": "this agent's client certificate (PEM); its common name is "
    "the worker id",
    "agent.tls_key_file": "this agent's private key (PEM)",
    "agent.metrics_port": "port of the agent's Prometheus /metrics endpoint (-1 = off)",
    "agent.heartbeat_interval_s": "seconds between heartbeats (the servers expect this pace)",
    "gateway.insecure": "listen beyond loopback although no API token is set (anyone reaching "
    "the gateway may then do anything)",
    "gateway.tls_cert_file": "the gateway's certificate (PEM, with its chain); with "
    "tls_key_file, it serves HTTPS only",
    "gateway.tls_key_file": "the private key of the gateway's certificate (PEM)",
}


def help_for(process: str, field: str) -> str | None:
    return BY_PROCESS.get(f"{process}.{field}") or HELP.get(field)
