# Hodei servers (control plane): a service job. One leader schedules (Consul session and KV
# lock); the others stand by and serve agents. Nomad registers hodei-server in Consul with a
# gRPC health check, so the servers' own registration is turned off here.

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "image" {
  type    = string
  default = "ghcr.io/hodei-platform/hodei:0.1.0"
}

variable "count" {
  type    = number
  default = 2
}

variable "redis_url" {
  type    = string
  default = "redis://hodei-redis.service.consul:6379/0"
}

variable "consul_addr" {
  type    = string
  default = "http://127.0.0.1:8500"
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
      port "grpc" {
        static = 7070
      }
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
        image   = var.image
        command = "hodei"
        args    = ["server"]
        ports   = ["grpc", "metrics"]
      }

      env {
        HODEI_REDIS_URL         = var.redis_url
        HODEI_GRPC_HOST         = "0.0.0.0"
        HODEI_GRPC_PORT         = "${NOMAD_PORT_grpc}"
        HODEI_METRICS_PORT      = "${NOMAD_PORT_metrics}"
        HODEI_SERVER_ID         = "${NOMAD_ALLOC_ID}"
        HODEI_ADVERTISE_ADDRESS = "${NOMAD_IP_grpc}"
        HODEI_CONSUL_REGISTER   = "false"
        CONSUL_HTTP_ADDR        = var.consul_addr
      }

      template {
        destination = "secrets/hodei.env"
        env         = true
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/hodei-server" }}
          HODEI_AGENT_TOKENS={{ .agent_tokens }}
          CONSUL_HTTP_TOKEN={{ .consul_token }}
          {{ end }}
        EOT
      }

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
