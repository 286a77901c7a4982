# Hodei gateways (HTTP API): a stateless service job. Nomad registers hodei-gateway in Consul
# with an HTTP check on /readyz (503 until Redis answers), so a load balancer reading Consul
# only sends traffic to gateways that can serve it.
#
# Host networking, on a port Nomad picks (see the service in Consul for where). Redis is
# found through Consul by a template; the API tokens and the Redis password come from a
# Nomad Variable:
#   nomad var put nomad/jobs/hodei-gateway api_tokens='s3cret:admin+invoke+read' redis_password=...

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
      mode = "host"
      port "http" {}
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
        image        = var.image
        command      = "hodei"
        args         = ["gateway"]
        network_mode = "host"
        ports        = ["http"]
      }

      env {
        HODEI_HOST            = "${NOMAD_IP_http}"
        HODEI_PORT            = "${NOMAD_PORT_http}"
        HODEI_CONSUL_REGISTER = "false"
      }

      template {
        destination = "secrets/hodei.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/hodei-gateway" }}
          HODEI_API_TOKENS={{ .api_tokens }}
          {{- $password := .redis_password }}
          {{- range $i, $redis := service "${var.redis_service}" }}{{ if eq $i 0 }}
          HODEI_REDIS_URL=redis://${var.redis_user}:{{ $password }}@{{ $redis.Address }}:{{ $redis.Port }}/${var.redis_db}
          {{- end }}{{ end }}
          {{- end }}
        EOT
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
