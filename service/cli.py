"""`graft serve`: run the BentoML services on chosen artifacts (heavy imports inside the handler)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from graft.argtypes import port
from graft.artifact.settings import env_name, expected
from graft.service.config import ServeConfig

log = logging.getLogger(__name__)


def _tuning() -> dict[str, FieldInfo]:
    """The settings with a derived flag: every number, switch and choice (`--max-queue` sets
    GRAFT_MAX_QUEUE). Lists and paths have flags of their own (--model, --head, --heads-dir) or stay
    in the environment; secrets always do (a command line is visible to every user of the machine)."""
    return {name: field for name, field in ServeConfig.model_fields.items()
            if field.annotation in (int, bool) or get_origin(field.annotation) is Literal}


def _parser(field: FieldInfo):
    """An argparse type validating a flag as its setting would, refused in graft's words."""
    adapter: TypeAdapter[Any] = TypeAdapter(Annotated[field.annotation, field])  # type: ignore[arg-type]  # a type built at run time

    def parse(text: str):
        try:
            return adapter.validate_python(text)
        except ValidationError:
            raise argparse.ArgumentTypeError(f"expected {expected(field)}, got {text!r}") from None

    return parse


def _add_tuning(parser: argparse.ArgumentParser) -> None:
    for name, field in _tuning().items():
        default = "" if field.default_factory else f", default {_shown(field.default)}"
        help_text = f"{field.description} (sets {env_name(name)}{default})"
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            choices = get_args(field.annotation)
            metavar = "{" + ",".join(choices) + "}" if choices else "N"
            parser.add_argument(flag, type=_parser(field), metavar=metavar, help=help_text)


def _shown(value) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve artifacts over HTTP (BentoML): /classify, /embed, /models",
        description="Serve exported artifacts with batched ONNX Runtime inference.",
    )
    parser.add_argument(
        "--model", action="append", metavar="DIR_OR_TAG",
        help="artifact directory or BentoML model tag, optionally NAME=DIR_OR_TAG; repeat for several "
             "(default: $GRAFT_MODELS, else the tf_efficientnet_lite0 model in the BentoML store)",
    )
    parser.add_argument(
        "--head", action="append", metavar="NAME=DIR",
        help="serve a head artifact (graft export --head-only) as NAME on the model it was fitted on; repeat for several",
    )
    parser.add_argument("--heads-dir", metavar="DIR",
                        help="where heads fitted with POST /heads are kept and loaded from (sets GRAFT_HEADS_DIR)")
    parser.add_argument("--default", metavar="NAME", help="model used when a request names none (default: the first)")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="this server's BentoML home: its Prometheus multiprocess files and temp files "
                             "(default: a directory of its own per port under the system's temp directory)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0, every interface)")
    parser.add_argument("--port", type=port, default=os.environ.get("PORT", "3000"),
                        help="TCP port (default: $PORT, else 3000)")
    _add_tuning(parser.add_argument_group("tuning", "each flag sets its GRAFT_* variable (README, Deploy)"))
    parser.set_defaults(handler=serve)


def _absolute(reference: str) -> str:
    """`[NAME=]DIR` with DIR made absolute (workers may run elsewhere); tags pass unchanged."""
    from graft.service.models import split_reference

    name, target = split_reference(reference)
    if Path(target).exists():
        target = str(Path(target).resolve())
    return f"{name}={target}" if name else target


def serve(args: argparse.Namespace) -> int:
    """Check the models resolve, then replace this process with `bentoml serve graft.service.app:Graft`."""
    from graft.artifact.manifest import verify_model_hash
    from graft.service.models import load_models, pick_default

    env = dict(os.environ)
    if args.model:
        env["GRAFT_MODELS"] = ",".join(_absolute(reference) for reference in args.model)
    if args.default:
        env["GRAFT_DEFAULT_MODEL"] = args.default
    if args.head:
        env["GRAFT_HEADS"] = ",".join(_absolute(reference) for reference in args.head)
    if args.heads_dir:
        env["GRAFT_HEADS_DIR"] = str(Path(args.heads_dir).resolve())
    if args.verbose:
        env["GRAFT_LOG_LEVEL"] = "DEBUG"
    for name in _tuning():
        value = getattr(args, name)
        if value is not None:
            env[env_name(name)] = str(int(value) if isinstance(value, bool) else value)
    os.environ.update(env)
    config = ServeConfig()
    models = load_models(config.models)  # fail here, with one clear line, not in a worker
    default = pick_default(models, config.default_model)
    for model in models.values():
        verify_model_hash(model.directory, model.manifest)  # before saying it is served
    for name, model in models.items():
        log.info("served as %s: %s %s from %s%s", name, model.manifest.task, model.manifest.version, model.directory,
                 " (default)" if name == default else "")
    # Model-store tags resolved here, so the server needs no model store: its BentoML home is its own.
    env["GRAFT_MODELS"] = ",".join(f"{name}={model.directory}" for name, model in models.items())
    env["BENTOML_HOME"] = str(_state_dir(args.state_dir, args.port))
    log.info("listening on http://%s:%d", args.host, args.port)
    command = [
        sys.executable, "-m", "bentoml", "serve", "graft.service.app:Graft", "--host", args.host, "--port", str(args.port),
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, env)
    return 0  # not reached


def _state_dir(given: str | None, port: int) -> Path:
    """The server's own BentoML home.

    NOTE: BentoML keeps its Prometheus multiprocess files under BENTOML_HOME and wipes them when a
    server starts, so two servers sharing one home (a `make serve` beside the test suite) would erase
    each other's metrics. One directory per port is private to the one server that can hold the port,
    and reused (wiped) by the next server on it instead of piling up.
    """
    if given:
        path = Path(given).resolve()
    else:
        path = Path(tempfile.gettempdir()) / f"graft-{os.getuid()}" / f"server-{port}"
        path.parent.mkdir(mode=0o700, exist_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    return path
