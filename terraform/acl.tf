# Least-privilege Consul ACLs: each process may write only its own service (and its checks),
# read what it must discover, and the servers alone may hold the leader lock.

resource "consul_acl_policy" "agent" {
  name        = "hodei-agent"
  description = "Hodei agents: register hodei-agent and pass its TTL check; find servers."
  rules       = <<-EOT
    service_prefix "hodei-agent" {
      policy = "write"
    }
    service "hodei-server" {
      policy = "read"
    }
    node_prefix "" {
      policy = "read"
    }
  EOT
}

resource "consul_acl_policy" "server" {
  name        = "hodei-server"
  description = "Hodei servers: watch agents' health, elect a leader with a session and a KV lock."
  rules       = <<-EOT
    service_prefix "hodei-server" {
      policy = "write"
    }
    service "hodei-agent" {
      policy = "read"
    }
    node_prefix "" {
      policy = "read"
    }
    session_prefix "" {
      policy = "write"
    }
    key "hodei/leader" {
      policy = "write"
    }
  EOT
}

resource "consul_acl_policy" "gateway" {
  name        = "hodei-gateway"
  description = "Hodei gateways: register hodei-gateway and its readiness check."
  rules       = <<-EOT
    service_prefix "hodei-gateway" {
      policy = "write"
    }
  EOT
}

resource "consul_acl_token" "agent" {
  description = "hodei agents"
  policies    = [consul_acl_policy.agent.name]
}

resource "consul_acl_token" "server" {
  description = "hodei servers"
  policies    = [consul_acl_policy.server.name]
}

resource "consul_acl_token" "gateway" {
  description = "hodei gateways"
  policies    = [consul_acl_policy.gateway.name]
}

data "consul_acl_token_secret_id" "agent" {
  accessor_id = consul_acl_token.agent.id
}

data "consul_acl_token_secret_id" "server" {
  accessor_id = consul_acl_token.server.id
}

data "consul_acl_token_secret_id" "gateway" {
  accessor_id = consul_acl_token.gateway.id
}
