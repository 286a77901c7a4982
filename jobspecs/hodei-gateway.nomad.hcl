# Hodei gateways (HTTP API): a stateless service job. Nomad registers hodei-gateway in Consul
# with an HTTP check on /readyz (503 while Redis is unreachable), so a load balancer reading
# Consul only sends traffic to gateways that can serve it.

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

job "hodei-gateway" {
  datacenters = var.datacenters
  type        = "service"

  update {
    max_parallel     = 1
    health_check     = "checks"
    min_healthy_time = "10s"
    healthy_deadline = "3m"
    auto_revert      = true
    canary           = 1
    auto_promote     = true
  }

  group "gateway" {
    count = var.count

    network {
      port "http" {
        to = 8080
      }
    }

    service {
      name     = "hodei-gateway"
      port     = "http"
      provider = "consul"
      tags     = ["http", "prometheus"]

      check {
        type     = "http"
        name     = "hodei gateway readiness"
        path     = "/readyz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "gateway" {
      driver       = "docker"
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      config {
        image   = var.image
        command = "hodei"
        args    = ["gateway"]
        ports   = ["http"]
      }

      env {
        HODEI_REDIS_URL       = var.redis_url
        HODEI_HOST            = "0.0.0.0"
        HODEI_PORT            = "8080"
        HODEI_CONSUL_REGISTER = "false"
      }

      template {
        destination = "secrets/hodei.env"
        env         = true
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/hodei-gateway" }}
          HODEI_API_TOKENS={{ .api_tokens }}
          {{ end }}
        EOT
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
