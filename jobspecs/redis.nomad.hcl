# The one Redis every server and gateway shares: append-only file on a host volume, so an
# acknowledged invocation survives a Redis restart ("nothing acknowledged is lost"), and a
# password: the default user is off, the "hodei" ACL user's password comes from a Nomad
# Variable (nomad var put nomad/jobs/hodei-redis password=...), the same one servers and
# gateways read from theirs.
# The client node needs the host volume: client { host_volume "hodei-redis" { path = "/srv/hodei-redis" } }.

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "redis_image" {
  type    = string
  default = "redis:7.2"
}

variable "volume" {
  type        = string
  description = "The client host volume that holds the AOF."
  default     = "hodei-redis"
}

variable "redis_user" {
  type    = string
  default = "hodei"
}

job "hodei-redis" {
  datacenters = var.datacenters
  type        = "service"

  group "redis" {
    count = 1

    volume "data" {
      type      = "host"
      source    = var.volume
      read_only = false
    }

    network {
      port "redis" {
        static = 6379
      }
    }

    service {
      name     = "hodei-redis"
      port     = "redis"
      provider = "consul"

      check {
        type     = "tcp"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "redis" {
      driver       = "docker"
      kill_timeout = "30s"

      config {
        image = var.redis_image
        args = [
          "redis-server",
          "--appendonly", "yes",
          "--appendfsync", "everysec",
          "--dir", "/data",
          "--aclfile", "/secrets/users.acl",
        ]
        ports = ["redis"]
      }

      # No password, no start: the template waits for the variable.
      template {
        destination = "secrets/users.acl"
        change_mode = "restart"
        data        = <<-EOT
          user default off
          {{ with nomadVar "nomad/jobs/hodei-redis" }}user ${var.redis_user} on >{{ .password }} ~* &* +@all{{ end }}
        EOT
      }

      volume_mount {
        volume      = "data"
        destination = "/data"
      }

      resources {
        cpu    = 500
        memory = 1024
      }
    }
  }
}
