# The one Redis every server and gateway shares: append-only file on a host volume, so an
# acknowledged invocation survives a Redis restart ("nothing acknowledged is lost").
# The client node needs the host volume: client { host_volume "hodei-redis" { path = "/srv/hodei-redis" } }.

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "image" {
  type    = string
  default = "redis:7.2"
}

variable "volume" {
  type        = string
  description = "The client host volume that holds the AOF."
  default     = "hodei-redis"
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
        image = var.image
        args = [
          "redis-server",
          "--appendonly", "yes",
          "--appendfsync", "everysec",
          "--dir", "/data",
        ]
        ports = ["redis"]
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
