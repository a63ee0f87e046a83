"""`l2s serve --ray`: the same server on Ray Serve. Each variant is a deployment of replicas, each replica holding
one vLLM engine (`VariantReplica`); our FastAPI app is the ingress deployment (`Ingress`), whose `ChatService`
reaches the variants through deployment handles (server/remote_engine.py). Everything that makes the server ours
— budgets, efforts, `auto`, reasoning fields, OpenAI errors, admission, /metrics — is the one service layer both
servers share.

`build_application` makes the Ray Serve application from a server config; `application(args)` is the import path
for `serve run` / `serve deploy` and KubeRay's RayService (deploy/rayservice.yaml).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from ray import serve

from server.budgets import Calibration
from server.config import ServerConfig, VariantConfig
from server.engine import VariantEngine, coalesce

APP_NAME = "long2short"
_END = object()  # a generation's end, in a replica's queue of chunks
logger = logging.getLogger("l2s.server")


@serve.deployment
class VariantReplica:
    """One replica of a variant: its vLLM engine, started in the constructor (Ray Serve counts the replica as
    running once it is up). `check_health` fails when the engine died, and Ray Serve replaces the replica."""

    async def __init__(self, variant: dict):
        config = VariantConfig.model_validate(variant)
        if config.engine.cpu_threads_bind is None:
            # replicas of every variant share the machine: no core pinning by position (one engine per process
            # here); Ray sets OMP_NUM_THREADS to the replica's num_cpus
            config.engine.cpu_threads_bind = "nobind"
        self.engine = VariantEngine(config)
        self.interval = config.ray.stream_interval_ms / 1000
        await self.engine.start()
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        logger.info("variant %s: replica %s ready (pid %d)", config.name, self.replica, os.getpid())

    def describe(self) -> dict:
        """What the ingress needs of the engine to plan requests: the context length, and the configs vLLM checks
        sampling parameters against (so the ingress checks each request itself, with no round trip here)."""
        return {"max_model_len": self.engine.max_model_len, "sampling_checks": self.engine.sampling_checks()}

    async def generate(self, request_id: str, prompt_ids: list[int], sampling, thinking_off: bool):
        """Lists of (choice index, chunk), the first chunk naming this replica: what the engine made since the last
        list, each choice's chunks joined. Lists go at once until one carries text (time to first token: a
        reasoning model's first token is often its opening marker, which shows nothing); the next ones at most
        every `stream_interval_ms` (every message through Ray costs CPU on both sides). Cancelled by the ingress
        (a client that went away), vLLM aborts the request."""
        made: asyncio.Queue = asyncio.Queue()

        async def produce() -> None:
            try:
                stream = self.engine.stream(request_id, prompt_ids, sampling, thinking_off)
                async with contextlib.aclosing(stream) as chunks:
                    async for item in chunks:
                        made.put_nowait(item)
                made.put_nowait(_END)
            except Exception as error:  # raised on to the ingress, after what came before it
                made.put_nowait(error)

        producer = asyncio.create_task(produce())
        loop = asyncio.get_running_loop()
        first, shown, sent = True, False, 0.0  # shown: a list with text went
        try:
            while True:
                items = [await made.get()]
                wait = sent + self.interval - loop.time()
                if shown and wait > 0 and isinstance(items[0], tuple):
                    await asyncio.sleep(wait)  # gather what comes meanwhile into the same message
                while not made.empty():
                    items.append(made.get_nowait())
                chunks = coalesce([item for item in items if isinstance(item, tuple)])
                if chunks:
                    if first:
                        chunks[0][1].replica, first = self.replica, False
                    yield chunks
                    sent = loop.time()
                    shown = shown or any(chunk.reasoning or chunk.answer for _, chunk in chunks)
                end = items[-1]
                if isinstance(end, Exception):
                    raise end
                if end is _END:
                    return
        finally:
            producer.cancel()  # (the ingress cancelled: the engine's stream is closed, which aborts the request)
            await asyncio.gather(producer, return_exceptions=True)

    def check_health(self) -> None:
        if self.engine.dead:
            raise RuntimeError(f"variant {self.engine.name}: its vLLM engine died")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.engine.shutdown()


@serve.deployment
@serve.ingress()
class Ingress:
    """Our FastAPI app as Ray Serve's ingress, its variants' engines the deployments behind `handles`."""

    def __init__(self, config: dict, handles: dict, calibration: Calibration | None, api_key: str | None):
        self.config = ServerConfig.model_validate(config)
        self.handles, self.calibration, self.api_key = handles, calibration, api_key
        self.service = None

    def __serve_build_asgi_app__(self):
        from server.app import build_app
        from server.remote_engine import RemoteVariant

        app_name = serve.get_replica_context().app_name  # (`serve run` and a RayService may name it otherwise)
        engines = {
            variant.name: RemoteVariant(variant, self.handles[variant.name], app_name)
            for variant in self.config.variants
        }
        app = build_app(self.config, self.calibration, self.api_key, engines=engines)
        self.service = app.state.service
        self.service.on_fatal = lambda: None  # reported by `check_health`: Ray Serve replaces this replica
        return app

    def check_health(self) -> None:
        if self.service is not None and self.service.fatal:
            raise RuntimeError(self.service.fatal)


def replica_options(variant: VariantConfig, grace_seconds: float = 10.0) -> dict:
    """Ray Serve's options for a variant's deployment, from its `ray:` settings. Unset `num_gpus`: the engine's
    tensor-parallel size if the cluster has GPUs now (set it explicitly where GPU nodes join later)."""
    import ray as ray_

    ray = variant.ray
    gpus = ray.num_gpus
    if gpus is None:
        has_gpus = ray_.is_initialized() and ray_.cluster_resources().get("GPU", 0) > 0
        gpus = variant.engine.tensor_parallel_size if has_gpus else 0
    options = {
        "name": variant.name,
        # the replica's engine runs max_num_seqs and queues max_waiting (the ingress admits no more); room for
        # the short `describe` calls besides
        "max_ongoing_requests": variant.engine.max_num_seqs + variant.max_waiting + 16,
        "ray_actor_options": {"num_cpus": ray.num_cpus, "num_gpus": gpus},
        "health_check_period_s": 2,
        "health_check_timeout_s": 30,
        "graceful_shutdown_timeout_s": grace_seconds,  # requests in flight when a replica stops
    }
    if ray.autoscaling is not None:
        options["autoscaling_config"] = ray.autoscaling.model_dump()
    else:
        options["num_replicas"] = ray.replicas
    return options


def build_application(config: ServerConfig, calibration: Calibration | None = None, api_key: str | None = None):
    """The Ray Serve application: one deployment per variant and the ingress."""
    adapters = [variant.name for variant in config.variants if variant.base is not None]
    if adapters:
        raise ValueError(
            f"LoRA adapter variants are not yet served under --ray ({', '.join(adapters)}): serve them with "
            "`l2s serve`, or merge them (`l2s distill ... --merge-adapter`)"
        )
    handles = {
        variant.name: VariantReplica.options(**replica_options(variant, config.shutdown_grace_seconds)).bind(
            variant.model_dump(mode="json")
        )
        for variant in config.variants
    }
    # the ingress tokenizes and relays: a tenth of a CPU in Ray's accounting (it takes what it needs)
    ingress = {"max_ongoing_requests": 100_000, "ray_actor_options": {"num_cpus": 0.1}}
    return Ingress.options(**ingress).bind(config.model_dump(mode="json"), handles, calibration, api_key)


def application(args: dict):
    """For `serve run server.ray_serve:application config=... models_dir=...` and KubeRay's RayService: the
    application from a server config (a file, `config`, or a mapping, `server`), a models directory, a
    calibration file and an API key, each optional."""
    config = ServerConfig.load(args.get("config"), args.get("models_dir"), raw=args.get("server"))
    calibration = Calibration.load(args["calibration"]) if args.get("calibration") else None
    return build_application(config, calibration, args.get("api_key") or os.environ.get("L2S_API_KEY"))


def serve_on_ray(
    config: ServerConfig,
    calibration: Calibration | None,
    api_key: str | None,
    address: str,
    host: str,
    port: int,
) -> None:
    """Start a local Ray instance (`address` "local") or join the cluster at `address`, deploy, and serve until
    SIGTERM/SIGINT (one arriving while the replicas load stops too); then delete the application — Ray Serve lets
    each replica finish its requests for its grace period — and stop Ray. A second signal stops at once."""
    import signal
    import time

    import ray

    class Stop(Exception):
        pass

    def stop(*_):
        raise Stop

    # "local": a new instance, never one RAY_ADDRESS or an earlier `ray start` points to (joining a cluster: l2s
    # and vLLM installed on every node)
    ray.init(address=address, include_dashboard=False)
    # after ray.init, which installs a SIGTERM handler of its own (it would exit without deleting the app)
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        serve.start(http_options={"host": host, "port": port, "keep_alive_timeout_s": int(config.keep_alive_seconds)})
        serve.run(build_application(config, calibration, api_key), name=APP_NAME, route_prefix="/")
        names = ", ".join(variant.name for variant in config.variants)
        logger.info("serving %s on http://%s:%d (Ray Serve)", names, host, port)
        while True:
            time.sleep(3600)
    except Stop:
        logger.info("stopping the Ray Serve application")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with contextlib.suppress(Exception):
            serve.delete(APP_NAME)
            if address == "local":  # our own instance: stop Serve too (on a shared cluster, other apps keep running)
                serve.shutdown()
        ray.shutdown()


__all__ = ["APP_NAME", "Ingress", "VariantReplica", "application", "build_application", "serve_on_ray"]
