# Variant of hodei-agent.nomad.hcl for nodes where the agent runs as a plain binary
# (raw_exec must be enabled on the client: plugin "raw_exec" { config { enabled = true } };
# on clients without it `hodei nomad plan` reports "missing drivers").
# Install Hodei on the node first (pip install hodei, or a packaged venv at binary_path);
# functions with runtime "docker" then use the node's Docker engine directly.
# Capacity and drain timings as in hodei-agent.nomad.hcl (raw_exec does not confine the
# agent to its reservation; Nomad still accounts it).

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "binary_path" {
  type        = string
  description = "Where the hodei console script is installed on the nodes."
  default     = "/opt/hodei/bin/hodei"
}

variable "servers" {
  type    = string
  default = ""
}

variable "consul_addr" {
  type    = string
  default = "http://127.0.0.1:8500"
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
    max_parallel = 1
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
      driver       = "raw_exec"
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      config {
        command = var.binary_path
        args    = ["agent"]
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
        NOMAD_NODE_NAME          = "${node.unique.name}"
        NOMAD_NODE_CLASS         = "${node.class}"
      }

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
