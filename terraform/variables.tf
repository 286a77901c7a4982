variable "datacenters" {
  type        = list(string)
  description = "Nomad datacenters that run Hodei."
  default     = ["dc1"]
}

variable "image" {
  type        = string
  description = "The Hodei image built from the repository's Dockerfile (server, gateway and the docker-driver agent), in a registry the clients pull from."
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

variable "agent_cpu" {
  type        = number
  description = "MHz Nomad reserves on each node for the agent (200) and its functions: what it offers."
  default     = 2200
}

variable "agent_memory" {
  type        = number
  description = "MB Nomad reserves on each node for the agent (256) and its functions: what it offers."
  default     = 2304
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
  description = "The Consul HTTP API as seen from the tasks (each node's Consul agent; they use host networking)."
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

variable "deploy_redis" {
  type        = bool
  description = "Run the hodei-redis job; false = use a Redis registered in Consul as redis_service."
  default     = true
}

variable "redis_service" {
  type        = string
  description = "The Consul service servers and gateways find Redis by."
  default     = "hodei-redis"
}

variable "redis_password" {
  type        = string
  description = "Password of Redis' hodei ACL user (empty = generated). URL-safe characters only."
  default     = ""
  sensitive   = true
}

variable "agent_grpc_token" {
  type        = string
  description = "The token agents present to servers (servers accept it)."
  sensitive   = true
}

variable "api_tokens" {
  type        = string
  description = "Gateway API tokens: comma-separated token:scope+scope entries (empty = one generated admin token, see the api_admin_token output; never an open API)."
  default     = ""
  sensitive   = true
}
