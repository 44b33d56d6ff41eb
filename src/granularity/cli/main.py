"""``granularity`` console command.

Each sub-command lives in its own module of this package and is registered in
:data:`COMMANDS`. User errors (:class:`~granularity.errors.GranularityError`, click usage
errors) are printed as one line on stderr with exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import click

from granularity.errors import GranularityError, suggest

# name -> "module:attribute"; modules are imported lazily so `granularity --help` stays fast.
COMMANDS: dict[str, str] = {
    "simulate": "granularity.cli.simulate:simulate",
    "phase": "granularity.cli.simulate:phase",
    "hierarchy": "granularity.cli.hierarchy:hierarchy",
    "transfer": "granularity.cli.transfer:transfer",
    "study": "granularity.cli.study:study",
    "sweep": "granularity.cli.sweep:sweep",
    "results": "granularity.cli.sweep:results",
    "report": "granularity.cli.report:report",
    "bench": "granularity.cli.bench:bench",
    "advise": "granularity.cli.advise:advise",
    "doctor": "granularity.cli.doctor:doctor",
    "data": "granularity.cli.data:data",
}

HELP = {
    "simulate": "Run the theory simulator (coarse vs fine pretraining) over seeds.",
    "phase": "Phase diagram: hard-sample error over a grid of two simulator parameters.",
    "hierarchy": "Show, list levels of, or export a label hierarchy.",
    "transfer": "Pretrain on one label function of a real data set, transfer to the target.",
    "study": "The paper's granularity study on a real data set.",
    "sweep": "Run a declarative sweep file (local processes or Ray).",
    "results": "List, filter and export a results store.",
    "report": "Build an HTML report with figures from result folders.",
    "bench": "Run the performance benchmarks and write JSON.",
    "advise": "At which granularity should I pretrain? Race the candidates on your data, within a budget.",
    "doctor": "What this machine has and lacks for each part, with the fix for each; exit 0/1.",
    "data": "Convert data sets: write WebDataset tar shards from an image folder or iNat2021.",
}


def _available() -> dict[str, str]:
    out = {}
    for name, target in COMMANDS.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            out[name] = target
    return out


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_available())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _available().get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def resolve_command(self, ctx, args):
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            raise click.UsageError(
                f"Unknown command {name!r}{suggest(name, self.list_commands(ctx))}; "
                f"valid commands are: {', '.join(self.list_commands(ctx))}."
            )
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx, formatter):
        rows = [(n, HELP.get(n, "")) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks (for bug reports).")
@click.version_option(package_name="granularity")
def cli(debug: bool) -> None:
    """granularity: at which label granularity should I pretrain, and why?"""
    # --debug is read by main() before parsing (it decides how errors are shown); nothing to
    # store here, so one --debug call never leaks into later in-process calls.


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 internal error, 2 user error, 130 Ctrl-C)."""
    args = list(sys.argv[1:] if argv is None else argv)
    # --device mps: operations MPS lacks run on the CPU (read by torch when it is first imported,
    # which the lazily loaded commands do after this line); no effect on other devices.
    os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    # --debug is the top-level option (`granularity --debug CMD ...`): only the options before the
    # command name count; a "--debug" among a command's arguments is a usage error like any other
    lead = []
    for a in args:
        if not a.startswith("-"):
            break
        lead.append(a)
    debug = "--debug" in lead or os.environ.get("GRANULARITY_DEBUG") == "1"
    try:
        code = cli.main(args=args, prog_name="granularity", standalone_mode=False)
        # a command may end with ctx.exit(n) (e.g. `sweep` exits 1 when runs failed)
        return code if isinstance(code, int) and not isinstance(code, bool) else 0
    except click.exceptions.Exit as exc:  # --help / --version
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("granularity: interrupted; finished work is saved, rerun the same command to resume.", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("granularity: interrupted; finished work is saved, rerun the same command to resume.", err=True)
        return 130
    except click.UsageError as exc:
        if debug:
            raise
        click.echo(f"granularity: error: {_one_line(exc.format_message())}", err=True)
        return 2
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"granularity: error: {_one_line(exc.format_message())}", err=True)
        return 2
    except GranularityError as exc:
        if debug:
            raise
        click.echo(f"granularity: error: {_one_line(exc)}", err=True)
        return getattr(exc, "exit_code", 2)  # 1 for a run that started and failed (RunFailedError)
    except MemoryError as exc:
        if debug:
            raise
        click.echo(f"granularity: error: out of memory ({exc}); reduce the sizes of the run.", err=True)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
