# Hodei servers (control plane): a service job. One leader schedules (Consul session and KV
# lock); the others stand by and serve agents. Nomad registers hodei-server in Consul with a
# gRPC health check (NOT_SERVING until Redis and Consul answered), so the servers' own
# registration is off here and a deployment that cannot reach them reverts.
#
# Host networking: the task reaches the node's Consul agent on 127.0.0.1:8500 (Consul's
# default client_addr) and listens on the node's address. Redis is found through Consul by
# a template (no Consul DNS needed in the container), with the password from a Nomad Variable:
#   nomad var put nomad/jobs/hodei-server agent_tokens=TOKEN:* consul_token=... redis_password=...
# (agent_tokens: "token:worker-id" entries, or one fleet token "token:*" for the system job)

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "image" {
  type        = string
  description = "The Hodei image (built from the repository's Dockerfile and pushed where the clients can pull it)."
}

variable "count" {
  type    = number
  default = 2
}

variable "consul_addr" {
  type        = string
  description = "The node's Consul agent as seen from the task (host networking)."
  default     = "http://127.0.0.1:8500"
}

variable "redis_service" {
  type        = string
  description = "The Consul service of the Redis to use (the hodei-redis job registers it)."
  default     = "hodei-redis"
}

variable "redis_user" {
  type    = string
  default = "hodei"
}

variable "redis_db" {
  type    = number
  default = 0
}

job "hodei-server" {
  datacenters = var.datacenters
  type        = "service"

  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "10s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    auto_revert       = true
  }

  group "server" {
    count = var.count

    spread {
      attribute = "${node.unique.id}"
    }

    network {
      mode = "host"
      port "grpc" {}
      port "metrics" {}
    }

    service {
      name     = "hodei-server"
      port     = "grpc"
      provider = "consul"
      tags     = ["grpc"]

      # Prometheus finds the metrics port here (dashboards/prometheus-consul.yml).
      meta {
        metrics_port = "${NOMAD_PORT_metrics}"
      }

      check {
        type         = "grpc"
        name         = "hodei server gRPC health"
        interval     = "10s"
        timeout      = "2s"
        grpc_service = "hodei.v1.WorkerService"
      }
    }

    task "server" {
      driver       = "docker"
      kill_signal  = "SIGTERM"
      kill_timeout = "20s"

      config {
        image        = var.image
        command      = "hodei"
        args         = ["server"]
        network_mode = "host"
        ports        = ["grpc", "metrics"]
      }

      env {
        HODEI_GRPC_HOST         = "${NOMAD_IP_grpc}"
        HODEI_GRPC_PORT         = "${NOMAD_PORT_grpc}"
        HODEI_METRICS_PORT      = "${NOMAD_PORT_metrics}"
        HODEI_SERVER_ID         = "${NOMAD_ALLOC_ID}"
        HODEI_ADVERTISE_ADDRESS = "${NOMAD_IP_grpc}"
        HODEI_CONSUL_REGISTER   = "false"
        CONSUL_HTTP_ADDR        = var.consul_addr
      }

      # Secrets, and Redis' address from Consul: the task restarts when Redis moves.
      template {
        destination = "secrets/hodei.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/hodei-server" }}
          HODEI_AGENT_TOKENS={{ .agent_tokens }}
          CONSUL_HTTP_TOKEN={{ .consul_token }}
          {{- $password := .redis_password }}
          {{- range $i, $redis := service "${var.redis_service}" }}{{ if eq $i 0 }}
          HODEI_REDIS_URL=redis://${var.redis_user}:{{ $password }}@{{ $redis.Address }}:{{ $redis.Port }}/${var.redis_db}
          {{- end }}{{ end }}
          {{- end }}
        EOT
      }

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
