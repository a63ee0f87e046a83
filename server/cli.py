"""`l2s serve`: host every variant behind one OpenAI-compatible endpoint."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "server.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG),
        help="server YAML: variants, engine settings, effort budgets, auto policy (default: configs/server.yaml)",
    )
    parser.add_argument(
        "--models-dir",
        default="models",
        help="serve every finished model found here, besides those the config lists (default: %(default)s)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    parser.add_argument(
        "--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1/* (also read from L2S_API_KEY)"
    )
    parser.add_argument(
        "--calibration",
        default=None,
        help="calibration.json from `l2s eval --calibrate`: measured effort budgets and auto routing",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="serve on Ray Serve: each variant a deployment of replicas (its `ray:` settings), this app the "
        "ingress; alone it starts a local Ray instance, with ADDRESS (`auto`, `ray://HOST:10001`) it joins that "
        "cluster",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    import asyncio
    import os

    import uvicorn

    from server.app import build_app
    from server.budgets import Calibration
    from server.config import ServerConfig

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.config and not Path(args.config).is_file():
        if args.config != str(DEFAULT_CONFIG):  # a path the user typed: a typo must not start a default server
            raise SystemExit(f"--config {args.config}: no such file")
        args.config = None
    config = ServerConfig.load(args.config, args.models_dir)
    if not config.variants:
        raise SystemExit(f"no models to serve: none in {args.models_dir} and none in the config (run `l2s lab build`)")
    calibration = Calibration.load(args.calibration) if args.calibration else None
    api_key = args.api_key or os.environ.get("L2S_API_KEY") or None
    if args.ray:
        # Ray's own SIGTERM handler (absl's failure handler) aborts the process after ours has begun the shutdown
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        from server.ray_serve import serve_on_ray

        try:
            serve_on_ray(config, calibration, api_key, args.ray, args.host, args.port)
        except ValueError as error:
            raise SystemExit(f"l2s serve --ray: {error}") from None
        return 0
    app = build_app(config, calibration, api_key)
    service = app.state.service

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT, keep listening but refuse new requests with 503 at once; let the requests in flight
        finish for up to `shutdown_grace_seconds`, end those still running properly (service.drain); only then
        let uvicorn close the listener and run the app's shutdown, which stops the engines. A second signal
        stops at once."""

        def handle_exit(self, sig, frame) -> None:
            if service.draining:
                return super().handle_exit(sig, frame)
            self._captured_signals.append(sig)  # uvicorn re-raises it once stopped, as a signalled process ends
            self.begin_drain()

        def begin_drain(self) -> None:
            """Also the way out when an engine fails for good (service.exit_failed): no signal, exit status 1."""
            service.draining = True
            loop = asyncio.get_running_loop()  # signal handlers run on the loop's thread, between its steps
            loop.call_soon_threadsafe(lambda: loop.create_task(self.drain_then_exit()))

        async def drain_then_exit(self) -> None:
            await service.drain(config.shutdown_grace_seconds)
            self.should_exit = True

    server = DrainingServer(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            timeout_graceful_shutdown=config.shutdown_grace_seconds,
            timeout_keep_alive=config.keep_alive_seconds,
        )
    )
    service.on_fatal = server.begin_drain
    logging.getLogger("l2s.server").info("serving %s on http://%s:%d", ", ".join(service.engines), args.host, args.port)
    server.run()
    if service.fatal:  # an engine failed for good: a supervisor should restart the server
        logging.getLogger("l2s.server").error("exiting with status 1: %s", service.fatal)
        return 1
    return 0
