output "job_ids" {
  description = "The Nomad jobs this module runs."
  value = compact(concat(
    nomad_job.redis[*].id,
    [nomad_job.server.id, nomad_job.gateway.id],
    nomad_job.agent_docker[*].id,
    nomad_job.agent_raw_exec[*].id,
  ))
}

output "gateway_service" {
  description = "The Consul service to route HTTP traffic to."
  value       = "hodei-gateway"
}

output "consul_token_accessors" {
  description = "Accessor ids of the Consul tokens created for agents, servers and gateways."
  value = {
    agent   = consul_acl_token.agent.id
    server  = consul_acl_token.server.id
    gateway = consul_acl_token.gateway.id
  }
}

output "gateway_consul_token" {
  description = "Secret of the gateway token (for gateways run outside this module)."
  value       = data.consul_acl_token_secret_id.gateway.secret_id
  sensitive   = true
}

output "api_admin_token" {
  description = "The generated admin API token (when api_tokens was left empty)."
  value       = var.api_tokens == "" ? random_password.api_admin.result : null
  sensitive   = true
}
