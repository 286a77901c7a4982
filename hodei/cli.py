"""The ``hodei`` command: one entry point for every process."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

from hodei import __version__, logs, loops, tracing
from hodei.errors import ConfigError
from hodei.exits import EXIT_CODES
from hodei.settings_help import help_for


def _add_settings_flags(parser: argparse.ArgumentParser, settings_cls: Any, process: str) -> None:
    """One flag per settings field (``--grpc-port``...); unset flags leave env/defaults."""
    for f in dataclasses.fields(settings_cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        kind = type(default) if default is not None else str
        variable = f"HODEI_{f.name.upper()}"
        described = help_for(process, f.name) or f.name.replace("_", " ")
        if kind is tuple or default in (None, ""):
            help_text = f"{described} ({variable})"
        else:
            help_text = f"{described} ({variable}; default {default})"
        if kind is tuple:
            parser.add_argument(flag, dest=f.name, action="append", default=None, help=help_text)
        elif kind is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag,
                dest=f.name,
                type=kind,
                default=None,
                metavar=f.name.split("_")[-1].upper() if kind is not str else "TEXT",
                help=help_text,
            )


def _overrides(args: argparse.Namespace, settings_cls: Any) -> dict[str, Any]:
    values = {}
    for f in dataclasses.fields(settings_cls):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return values


def _settings_class(process: str) -> Any:
    if process == "server":
        from hodei.plugin.settings import ServerSettings

        return ServerSettings
    if process == "agent":
        from hodei.agent.settings import AgentSettings

        return AgentSettings
    from hodei.api.settings import GatewaySettings

    return GatewaySettings


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; given the arguments, only the settings flags of the process
    they start (the settings classes take a while to import: the CLI stays quick)."""
    from hodei import certs, commands, dev
    from hodei import nomad as nomad_deploy

    wanted = {a for a in argv or () if not a.startswith("-")} if argv is not None else None
    parser = argparse.ArgumentParser(
        prog="hodei",
        description="Hodei runs functions on a fleet of workers. Start with `hodei dev`.",
        epilog="exit codes of the user commands:\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hodei {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in (
        ("server", "run a control-plane server (scheduler, gRPC)"),
        ("agent", "run a worker agent"),
        ("gateway", "run the HTTP gateway"),
    ):
        process = sub.add_parser(
            name,
            help=help_text,
            description=f"{help_text}. Every flag is also a HODEI_* variable; flags win.",
        )
        if wanted is None or name in wanted:
            _add_settings_flags(process, _settings_class(name), name)
    commands.add_commands(sub)
    dev.add_command(sub)
    nomad_deploy.add_command(sub)
    certs.add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(sys.argv[1:] if argv is None else argv).parse_args(argv)
    try:
        if args.command == "server":
            from hodei.plugin.server import serve as serve_server
            from hodei.plugin.settings import ServerSettings

            server_settings = ServerSettings.from_env(**_overrides(args, ServerSettings))
            new_loop = loops.factory(server_settings.event_loop)
            logs.setup("server", server_settings.log_level)
            tracing.setup("server")
            loops.run(serve_server(server_settings), new_loop)
            return 0
        if args.command == "agent":
            # The agent forks a child per job while gRPC threads run; gRPC's fork handlers
            # are for children that use gRPC, which functions never do.
            os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
            from hodei.agent.agent import serve as serve_agent
            from hodei.agent.sandbox_secrets import protect_agent
            from hodei.agent.settings import AgentSettings

            agent_settings = AgentSettings.from_env(**_overrides(args, AgentSettings))
            new_loop = loops.factory(agent_settings.event_loop)
            logs.setup("agent", agent_settings.log_level)
            agent_settings = protect_agent(agent_settings)
            tracing.setup("agent")
            return loops.run(serve_agent(agent_settings), new_loop)
        if args.command == "gateway":
            from hodei.api.app import serve as serve_gateway
            from hodei.api.settings import GatewaySettings

            gateway_settings = GatewaySettings.from_env(**_overrides(args, GatewaySettings))
            logs.setup("gateway", gateway_settings.log_level)
            tracing.setup("gateway")
            serve_gateway(gateway_settings)
            return 0
        if args.command == "nomad":
            from hodei import nomad as nomad_deploy

            return nomad_deploy.run(args)
        if args.command == "certs":
            from hodei import certs

            return certs.run(args)
        if args.command == "dev":
            from hodei import dev

            return dev.run(args)
        from hodei import commands

        return commands.run(args)
    except ConfigError as exc:
        print(f"hodei: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
