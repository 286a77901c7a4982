# The Hodei worker agent on every client node (a Nomad system job, docker driver).
# The agent runs functions in sibling containers through the node's Docker engine, so the
# client must allow the socket mount (plugin "docker" { config { volumes { enabled = true } } }).
# See hodei-agent-raw-exec.nomad.hcl for nodes where the agent runs as a plain binary.
#
# Nomad stops an agent (node drain, job stop, update) with kill_signal: the agent turns
# Draining, takes no new work, lets running invocations finish within HODEI_DRAIN_GRACE_S,
# hands back the rest and exits. kill_timeout must stay above that grace.

variable "datacenters" {
  type        = list(string)
  description = "Datacenters whose client nodes run an agent."
  default     = ["dc1"]
}

variable "image" {
  type        = string
  description = "The Hodei container image."
  default     = "ghcr.io/hodei-platform/hodei:0.1.0"
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
  description = "Only run on client nodes of this class (empty = every node)."
  default     = ""
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
    value     = var.node_class == "" ? ".*" : "^${var.node_class}$"
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
      kill_signal  = "SIGTERM"
      kill_timeout = "45s"

      config {
        image        = var.image
        command      = "hodei"
        args         = ["agent"]
        network_mode = "host"
        volumes      = ["/var/run/docker.sock:/var/run/docker.sock"]
      }

      env {
        HODEI_SERVER            = var.servers
        HODEI_WORKER_ID         = "${node.unique.name}"
        HODEI_DRAIN_GRACE_S     = "30"
        HODEI_METRICS_HOST      = "0.0.0.0"
        HODEI_ADVERTISE_ADDRESS = "${attr.unique.network.ip-address}"
        CONSUL_HTTP_ADDR        = var.consul_addr
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
        cpu    = 200
        memory = 256
      }
    }
  }
}
