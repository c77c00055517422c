"""``tract-eval serve``: load a judge once and answer HTTP requests until stopped (Ctrl-C, SIGTERM)."""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import sys
import threading
from pathlib import Path

from ..cliargs import add_cards_option, add_command, use_cards
from ..errors import ConfigError

LOOPBACK = "127.0.0.1"


def register(subparsers) -> None:
    from ..commands import add_judge_overrides

    p = add_command(subparsers, "serve", cmd_serve, help="serve a judge over HTTP (grading, OpenRLHF rewards)",
                    description="Load a judge once and serve it: GET /health, POST /v1/grade, POST /get_reward "
                                "(OpenRLHF's remote reward API). Needs the serve extra: pip install 'tract-eval[serve]'.",
                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--judge", required=True, help="judge card name or path (one judge)")
    p.add_argument("--host", default=LOOPBACK,
                   help="address to listen on; the default takes local connections only (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="require 'Authorization: Bearer KEY' where KEY is this environment variable's value")
    p.add_argument("--rubric", default=None, metavar="TEXT|FILE",
                   help="the rubric for requests that give none (text, or a file holding it)")
    p.add_argument("--scale", default="1-5", metavar="LOW-HIGH", help="the score scale (the score candidates follow it)")
    p.add_argument("--max-items", type=int, default=256, help="most items (or queries) in one request (more: 413)")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body in MiB (larger: 413)")
    p.add_argument("--unscored-reward", type=float, default=None,
                   help="/get_reward: the reward of a query with no score (too long, empty, unparsable); "
                        "default the scale's low end. Its status says why.")
    p.add_argument("--gather-ms", type=float, default=50.0,
                   help="after a request arrives, wait this long for more (each new one restarts it, up to 10x) "
                        "so that requests arriving together are judged in one batch")
    add_cards_option(p)
    # --api-key-env is the server's own key here; an openai-backend judge's key variable moves aside
    add_judge_overrides(p, {"api_key_env": "--backend-api-key-env"})


def _rubric(value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value)
    try:
        if len(value) < 4096 and path.is_file():
            return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--rubric {value}: cannot read it ({exc})") from None
    if not value.strip():
        raise ConfigError("--rubric is empty")
    return value


def _api_key(var: str | None) -> str | None:
    if var is None:
        return None
    key = os.environ.get(var)
    if not key:
        raise ConfigError(f"--api-key-env {var}: that environment variable is not set or empty")
    return key


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _checked_options(args):
    """Everything a user can get wrong, before the model loads."""
    from ..benchmarks.base import parse_scale
    from .app import ServeOptions

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: needs 0-65535")
    if args.max_items < 1:
        raise ConfigError(f"--max-items must be >= 1, not {args.max_items}")
    if not args.max_body_mb > 0:
        raise ConfigError(f"--max-body-mb must be > 0, not {args.max_body_mb}")
    if not args.gather_ms >= 0:
        raise ConfigError(f"--gather-ms must be >= 0, not {args.gather_ms}")
    return ServeOptions(judge=args.judge, scale=parse_scale(args.scale), rubric=_rubric(args.rubric),
                        max_items=args.max_items, max_body_bytes=int(args.max_body_mb * 2 ** 20),
                        api_key=_api_key(args.api_key_env), unscored_reward=args.unscored_reward)


def cmd_serve(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ModuleNotFoundError as exc:
        raise ConfigError(f"tract-eval serve needs {exc.name}: pip install 'tract-eval[serve]'") from None
    from ..commands import judge_overrides
    from ..judges import build_judge
    from .app import build_app
    from .queue import GradingQueue, Settings

    use_cards(args)
    options = _checked_options(args)
    overrides = dataclasses.replace(judge_overrides(args), scale=options.scale)
    build_judge(args.judge, overrides)  # the card and flags are checked before the model loads

    def judge_of(settings):
        # a request's n_cot and seed win over the flags (n_cot 0 or None: the flags')
        return build_judge(args.judge, overrides, n_cot=settings.n_cot or None, seed=settings.seed)

    gather = args.gather_ms / 1000
    queue = GradingQueue(judge_of, gather_s=gather, gather_max_s=10 * gather).start()  # loads the model
    judge = queue.judge(Settings())
    reach = ("local connections only; --host 0.0.0.0 to listen on every interface" if _is_loopback(args.host)
             else "reachable from other machines" + ("" if options.api_key else ", with NO API key (--api-key-env)"))
    print(f"tract-eval serve: judge {judge.name} on {judge.backend.describe().get('model')}; "
          f"listening on http://{args.host}:{args.port} ({reach})", file=sys.stderr, flush=True)
    config = uvicorn.Config(build_app(options, queue), host=args.host, port=args.port,
                            log_level="warning" if args.quiet else "info", timeout_graceful_shutdown=5)
    server = _Server(config, queue)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on
        pass
    finally:
        queue.stop()
    print("tract-eval serve: stopped", file=sys.stderr, flush=True)
    if queue.busy:
        # every request is answered; the worker is inside a model forward and leaves it at its next row.
        # Interpreter shutdown under a running torch thread can abort, so the process ends here.
        sys.stdout.flush()
        os._exit(0)
    return 0


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, whose shutdown signal also fails the queued and running grading jobs, so
        requests in flight get a 503 at once instead of holding the graceful shutdown."""

        def __init__(self, config, queue):
            super().__init__(config)
            self.queue = queue

        def handle_exit(self, sig, frame) -> None:
            # off the signal handler: stopping takes the queue's lock
            threading.Thread(target=self.queue.stop, args=(0,), daemon=True).start()
            super().handle_exit(sig, frame)

    return Server


def _Server(config, queue):  # noqa: N802 - builds the class when uvicorn is importable
    return _server_class()(config, queue)
