# Hodei on a Nomad + Consul fleet: Redis, servers, gateways and an agent on every node,
# submitted from the jobspecs in ../jobspecs with their HCL2 variables, and the secrets each
# process needs (Consul ACL tokens, the Redis password, API tokens) handed to the jobs
# through Nomad Variables. Nothing is left open: Redis has a password and the API tokens.

locals {
  jobspecs       = "${path.module}/../jobspecs"
  datacenters    = jsonencode(var.datacenters)
  redis_password = var.redis_password != "" ? var.redis_password : random_password.redis.result
  api_tokens     = var.api_tokens != "" ? var.api_tokens : "${random_password.api_admin.result}:admin+invoke+read"
}

resource "random_password" "redis" {
  length  = 32
  special = false
}

resource "random_password" "api_admin" {
  length  = 40
  special = false
}

resource "nomad_job" "redis" {
  count   = var.deploy_redis ? 1 : 0
  jobspec = file("${local.jobspecs}/redis.nomad.hcl")

  hcl2 {
    vars = {
      datacenters = local.datacenters
      redis_image = var.redis_image
      volume      = var.redis_volume
    }
  }

  depends_on = [nomad_variable.redis]
}

resource "nomad_job" "server" {
  jobspec = file("${local.jobspecs}/hodei-server.nomad.hcl")

  hcl2 {
    vars = {
      datacenters   = local.datacenters
      image         = var.image
      count         = tostring(var.server_count)
      consul_addr   = var.consul_addr
      redis_service = var.redis_service
    }
  }

  depends_on = [nomad_job.redis, nomad_variable.server]
}

resource "nomad_job" "gateway" {
  jobspec = file("${local.jobspecs}/hodei-gateway.nomad.hcl")

  hcl2 {
    vars = {
      datacenters   = local.datacenters
      image         = var.image
      count         = tostring(var.gateway_count)
      redis_service = var.redis_service
    }
  }

  depends_on = [nomad_job.server, nomad_variable.gateway]
}

resource "nomad_job" "agent_docker" {
  count   = var.agent_driver == "docker" ? 1 : 0
  jobspec = file("${local.jobspecs}/hodei-agent.nomad.hcl")

  hcl2 {
    vars = {
      datacenters = local.datacenters
      image       = var.image
      consul_addr = var.consul_addr
      node_class  = var.agent_node_class == "" ? ".*" : "^${var.agent_node_class}$"
      cpu         = tostring(var.agent_cpu)
      memory      = tostring(var.agent_memory)
    }
  }

  depends_on = [nomad_job.server, nomad_variable.agent]
}

resource "nomad_job" "agent_raw_exec" {
  count   = var.agent_driver == "raw_exec" ? 1 : 0
  jobspec = file("${local.jobspecs}/hodei-agent-raw-exec.nomad.hcl")

  hcl2 {
    vars = {
      datacenters = local.datacenters
      binary_path = var.agent_binary_path
      consul_addr = var.consul_addr
      cpu         = tostring(var.agent_cpu)
      memory      = tostring(var.agent_memory)
    }
  }

  depends_on = [nomad_job.server, nomad_variable.agent]
}

resource "nomad_variable" "redis" {
  path = "nomad/jobs/hodei-redis"
  items = {
    password = local.redis_password
  }
}

resource "nomad_variable" "agent" {
  path = "nomad/jobs/hodei-agent"
  items = {
    agent_token  = var.agent_grpc_token
    consul_token = data.consul_acl_token_secret_id.agent.secret_id
  }
}

resource "nomad_variable" "server" {
  path = "nomad/jobs/hodei-server"
  items = {
    # The agents of the system job share one token: a fleet token (token:*), which may
    # register any worker id but never take over a live one (see the README).
    agent_tokens   = "${var.agent_grpc_token}:*"
    consul_token   = data.consul_acl_token_secret_id.server.secret_id
    redis_password = local.redis_password
  }
}

resource "nomad_variable" "gateway" {
  path = "nomad/jobs/hodei-gateway"
  items = {
    api_tokens     = local.api_tokens
    redis_password = local.redis_password
  }
}
