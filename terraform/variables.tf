variable "datacenters" {
  type        = list(string)
  description = "Nomad datacenters that run Hodei."
  default     = ["dc1"]
}

variable "image" {
  type        = string
  description = "The Hodei container image (server, gateway and the docker-driver agent)."
  default     = "ghcr.io/hodei-platform/hodei:0.1.0"
}

variable "agent_driver" {
  type        = string
  description = "How the agent runs on each node: docker (a container) or raw_exec (a binary)."
  default     = "docker"

  validation {
    condition     = contains(["docker", "raw_exec"], var.agent_driver)
    error_message = "agent_driver must be docker or raw_exec."
  }
}

variable "agent_binary_path" {
  type        = string
  description = "With agent_driver = raw_exec: where hodei is installed on the nodes."
  default     = "/opt/hodei/bin/hodei"
}

variable "agent_node_class" {
  type        = string
  description = "Run agents only on client nodes of this class (empty = every node)."
  default     = ""
}

variable "server_count" {
  type    = number
  default = 2
}

variable "gateway_count" {
  type    = number
  default = 2
}

variable "consul_addr" {
  type        = string
  description = "The Consul HTTP API as seen from the tasks (each node's Consul agent)."
  default     = "http://127.0.0.1:8500"
}

variable "redis_image" {
  type    = string
  default = "redis:7.2"
}

variable "redis_volume" {
  type        = string
  description = "The Nomad client host volume that keeps Redis' append-only file."
  default     = "hodei-redis"
}

variable "redis_url" {
  type        = string
  description = "Redis for servers and gateways; empty = the hodei-redis job of this module."
  default     = ""
}

variable "agent_grpc_token" {
  type        = string
  description = "The token agents present to servers (servers accept it)."
  sensitive   = true
}

variable "api_tokens" {
  type        = string
  description = "Gateway API tokens: comma-separated token:scope+scope entries (empty = open)."
  default     = ""
  sensitive   = true
}
