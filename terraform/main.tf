# Hodei on a Nomad + Consul fleet: Redis, servers, gateways and an agent on every node,
# submitted from the jobspecs in ../jobspecs with their HCL2 variables, and the Consul ACL
# tokens each process needs, handed to the jobs through Nomad Variables.

locals {
  jobspecs    = "${path.module}/../jobspecs"
  datacenters = jsonencode(var.datacenters)
  redis_url   = var.redis_url != "" ? var.redis_url : "redis://hodei-redis.service.consul:6379/0"
}

resource "nomad_job" "redis" {
  count   = var.redis_url == "" ? 1 : 0
  jobspec = file("${local.jobspecs}/redis.nomad.hcl")

  hcl2 {
    vars = {
      datacenters = local.datacenters
      image       = var.redis_image
      volume      = var.redis_volume
    }
  }
}

resource "nomad_job" "server" {
  jobspec = file("${local.jobspecs}/hodei-server.nomad.hcl")

  hcl2 {
    vars = {
      datacenters = local.datacenters
      image       = var.image
      count       = tostring(var.server_count)
      redis_url   = local.redis_url
      consul_addr = var.consul_addr
    }
  }

  depends_on = [nomad_job.redis, nomad_variable.server]
}

resource "nomad_job" "gateway" {
  jobspec = file("${local.jobspecs}/hodei-gateway.nomad.hcl")

  hcl2 {
    vars = {
      datacenters = local.datacenters
      image       = var.image
      count       = tostring(var.gateway_count)
      redis_url   = local.redis_url
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
      node_class  = var.agent_node_class
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
    }
  }

  depends_on = [nomad_job.server, nomad_variable.agent]
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
    agent_tokens = var.agent_grpc_token
    consul_token = data.consul_acl_token_secret_id.server.secret_id
  }
}

resource "nomad_variable" "gateway" {
  path = "nomad/jobs/hodei-gateway"
  items = {
    api_tokens = var.api_tokens
  }
}
