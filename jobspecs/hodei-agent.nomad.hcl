# The Hodei worker agent on every client node (a Nomad system job, docker driver).
# The agent runs functions in sibling containers through the node's Docker engine, so the
# client must allow bind mounts (plugin "docker" { config { volumes { enabled = true } } });
# the constraint below keeps the job off clients that do not (`hodei nomad plan` says so).
# See hodei-agent-raw-exec.nomad.hcl for nodes where the agent runs as a plain binary.
#
# Capacity: what Nomad reserves here (cpu, memory) is what the agent offers, minus its own
# 200 MHz / 256 MB: Nomad accounts the functions (process ones run inside this task's
# limits, docker ones in sibling containers limited per function), so nothing else is
# scheduled onto what they use. Change it with -var cpu=... -var memory=...
#
# Nomad stops an agent (node drain, job stop, update) with kill_signal: the agent turns
# Draining, takes no new work, lets running invocations finish within HODEI_DRAIN_GRACE_S,
# then hands back the rest (stopping their containers) within HODEI_DRAIN_HANDBACK_S, and
# exits. Grace + hand-back + 2 s must fit kill_timeout, which Nomad caps at the clients'
# max_kill_timeout (30 s by default): 20 + 8 + 2 = 30. `hodei nomad plan` checks it.

variable "datacenters" {
  type        = list(string)
  description = "Datacenters whose client nodes run an agent."
  default     = ["dc1"]
}

variable "image" {
  type        = string
  description = "The Hodei image (built from the repository's Dockerfile and pushed where the clients can pull it)."
}

variable "servers" {
  type        = string
  description = "Comma-separated server gRPC addresses; empty = find passing hodei-server instances in Consul."
  default     = ""
}

variable "consul_addr" {
  type        = string
  description = "The Consul HTTP API the agent registers with (the node's own Consul agent)."
  default     = "http://127.0.0.1:8500"
}

variable "node_class" {
  type        = string
  description = "A regular expression the client's node class must match (default: every node)."
  default     = ".*"
}

variable "cpu" {
  type        = number
  description = "MHz Nomad reserves for the agent (200) and the functions it runs."
  default     = 2200
}

variable "memory" {
  type        = number
  description = "MB Nomad reserves for the agent (256) and the functions it runs."
  default     = 2304
}

job "hodei-agent" {
  datacenters = var.datacenters
  type        = "system"

  update {
    max_parallel     = 1
    min_healthy_time = "10s"
    healthy_deadline = "3m"
  }

  constraint {
    attribute = "${node.class}"
    operator  = "regexp"
    value     = var.node_class
  }

  constraint {
    attribute = "${attr.driver.docker.volumes.enabled}"
    value     = "true"
  }

  group "agent" {
    network {
      port "health" {
        static = 7071
      }
      port "metrics" {
        static = 9465
      }
    }

    task "agent" {
      driver       = "docker"
      user         = "root" # the Docker socket is root's
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      config {
        image        = var.image
        command      = "hodei"
        args         = ["agent"]
        network_mode = "host"
        init         = true
        volumes = [
          "/var/run/docker.sock:/var/run/docker.sock",
          # The agent's mark survives restarts: it takes back its leftover containers.
          "/var/lib/hodei:/var/lib/hodei",
        ]
      }

      env {
        HODEI_SERVER             = var.servers
        HODEI_WORKER_ID          = "${node.unique.name}"
        HODEI_STATE_DIR          = "/var/lib/hodei/agent"
        HODEI_RUNTIMES           = "docker"
        HODEI_DRAIN_GRACE_S      = "20"
        HODEI_DRAIN_HANDBACK_S   = "8"
        HODEI_NOMAD_MHZ_PER_CORE = "${attr.cpu.frequency}"
        HODEI_METRICS_HOST       = "0.0.0.0"
        HODEI_ADVERTISE_ADDRESS  = "${attr.unique.network.ip-address}"
        CONSUL_HTTP_ADDR         = var.consul_addr
        # The node's identity, advertised as labels function specs can constrain on
        # (nomad.node, nomad.class; NOMAD_DC and NOMAD_REGION come from Nomad). Add a
        # NOMAD_NODE_META_<KEY> = "${meta.<key>}" line per node meta key to advertise.
        NOMAD_NODE_NAME  = "${node.unique.name}"
        NOMAD_NODE_CLASS = "${node.class}"
      }

      # Secrets from Nomad Variables (nomad var put nomad/jobs/hodei-agent agent_token=... consul_token=...).
      template {
        destination = "secrets/hodei.env"
        env         = true
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/hodei-agent" }}
          HODEI_TOKEN={{ .agent_token }}
          CONSUL_HTTP_TOKEN={{ .consul_token }}
          {{ end }}
        EOT
      }

      resources {
        cpu    = var.cpu
        memory = var.memory
      }
    }
  }
}
