"""`avsa stack up|status|down|env`: the local SeaweedFS S3 + MLflow + Ray services."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from cluster.cli import add_config_arguments
from cluster.stack import SERVICES, Stack, StackError
from trainer.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "stack",
        help="start, inspect or stop the local services (S3, MLflow, Ray) on 127.0.0.1",
        description="Real services bound to --stack.host (127.0.0.1): SeaweedFS S3 with generated "
        "credentials, an MLflow tracking server (sqlite + proxied artifacts; --stack.mlflow_auth basic "
        "for a generated login) and a Ray head with its dashboard (so `ray job submit` works), with "
        "token authentication unless --stack.auth none, so other users of the machine cannot submit "
        "jobs to it. `avsa stack env` gives clients the credentials. State and logs live in "
        "--stack.state_dir (state.json and ray_token are readable by you only).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser(
        "up",
        help="start the services and wait until they are healthy; on a running stack, restart those "
        "that are down and keep the others (same PIDs, same data)",
    )
    up.add_argument(
        "--services",
        default=",".join(SERVICES),
        help=f"comma-separated subset of {','.join(SERVICES)} (default: all)",
    )
    up.add_argument(
        "--hosts",
        type=int,
        help="run the stack across N virtual hosts (network namespaces; needs root): services and the "
        "Ray head on the first, a Ray worker node on each other (same as --stack.hosts N)",
    )
    actions.add_parser("status", help="show each service's endpoint, PID and health; exit 1 if any is down")
    actions.add_parser("down", help="stop exactly the processes `up` started (by PID)")
    actions.add_parser("env", help="print `export` lines pointing s3fs, MLflow and Ray clients at the stack")
    for action in actions.choices.values():
        add_config_arguments(action, "stack")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    if getattr(args, "hosts", None):
        cfg.stack.hosts = args.hosts
    stack = Stack(cfg.stack)
    console = Console()
    try:
        if args.action == "up":
            services = [s.strip() for s in args.services.split(",") if s.strip()]
            if stack.running():  # heal: restart what is down, keep what is up (same PIDs, same data)
                with console.status("restarting the services that are down …"):
                    started = stack.heal(services)
                console.print(f"started again: {', '.join(started)}" if started else "every service is up")
            else:
                with console.status(f"starting {', '.join(services)} …"):
                    stack.up(services)
            show_status(stack, console)
            console.print("clients: [bold]eval $(avsa stack env)[/bold]")
            return 0
        if args.action == "status":
            return 0 if show_status(stack, console) else 1
        if args.action == "down":
            stopped = stack.down()
            console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
            return 0
        for key, value in stack.client_env().items():
            print(f"export {key}={value}")
        return 0
    except StackError as exc:
        print(f"avsa stack {args.action}: {exc}", file=sys.stderr)
        return 1


def show_status(stack: Stack, console: Console) -> bool:
    """Print a table of the services; True if every recorded service is healthy."""
    report = stack.status()
    if not report:
        console.print(f"no stack recorded in {stack.state_dir}")
        return False
    table = Table("service", "endpoint", "pid", "health")
    for name, item in report.items():
        health = "[green]healthy[/green]" if item["healthy"] else "[red]down[/red]"
        table.add_row(name, str(item["endpoint"]), str(item["pid"]), health)
    console.print(table)
    if "mlflow" in report:
        console.print(f"MLflow dashboard: {report['mlflow']['endpoint']}")
    if "ray" in report:
        console.print(f"Ray dashboard:    {report['ray']['endpoint']}{stack.sign_in_hint()}")
    return all(item["healthy"] for item in report.values())
