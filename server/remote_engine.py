"""The ingress's stand-in for a variant's engine under `l2s serve --ray`: the variant runs as a Ray Serve
deployment (server/ray_serve.py), each replica holding its own vLLM engine, and `RemoteVariant` sends the
engine calls of `ChatService` through the deployment's handle to whichever replica Ray picks.

What stays here, in the one ingress process: admission (every request passes through it, so the counts are the
whole variant's, across its replicas), tokenizing with the variant's tokenizer, the reasoning format, tool
parsing, checking the sampling parameters (against the configs of the replicas' engines, read once from the first
replica: one round trip per request, the generation, not two), and the metrics. What runs on a replica: the
generation itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from server.config import VariantConfig
from server.engine import Chunk, VariantEngine
from server.errors import APIError

logger = logging.getLogger("l2s.server")
RETRIES = 3  # a request whose replica died before it produced anything goes to another replica, this many times
# How often the live replicas are counted where the handle's router cannot be read (`routable_replicas`): Ray
# Serve's status is the whole cluster's, built and validated on every call (~0.1-0.2 CPU-s in the ingress and as
# much in the controller here: a fifth of the ingress's CPU under load when asked every 2 s), so it is asked often
# only while the count may be changing: before the first replica is up, and for a while after a request saw a
# replica fail or the count changed. Otherwise every 15 s, which also finds a replica that died idle (Ray Serve's
# own health check runs every 10 s).
REFRESH_SECONDS = 2.0
STEADY_REFRESH_SECONDS = 15.0
UNSETTLED_SECONDS = 120.0  # after a failure or a change of count, counted every REFRESH_SECONDS this long


def routable_replicas(handle) -> int | None:
    """How many replicas the deployment handle's router can send requests to: the running replicas the controller
    pushes to every router, less any the router itself saw die. Free to read, where `serve.status()` is not, but
    Ray Serve's internal state (Ray 2.60): None where this Ray keeps it elsewhere, and the caller asks the
    controller instead."""
    try:  # (the plain attribute: the `request_router` property would build the router here, on the wrong thread)
        return len(handle._router._asyncio_router._request_router.curr_replicas)
    except (AttributeError, TypeError):  # no router yet, or not where Ray 2.60 keeps it
        return None


class RemoteVariant(VariantEngine):
    def __init__(self, variant: VariantConfig, handle, app_name: str):
        super().__init__(variant)
        self.handle = handle  # Ray Serve's DeploymentHandle of the variant's deployment
        self.app_name = app_name
        self.live_replicas = 0
        self.started = False
        self._sampling_checks: tuple | None = None  # the replicas' engine configs (`VariantEngine.sampling_checks`)
        self._counted = True  # the last refresh found the deployment
        self._refreshed = float("-inf")  # when the controller was last asked
        self._unsettled_until = float("inf")  # until when the count may be changing (from the start: until counted)

    # Ray Serve, not our watchdog, notices a dead replica (its health check) and starts another: a remote variant
    # is never "dead" to the watchdog; it is unavailable while it has no live replica.
    @property
    def ready(self) -> bool:
        return self.started and self.live_replicas > 0

    @property
    def dead(self) -> bool:
        return False

    @property
    def status(self) -> str:
        if self.ready:
            return "ready"
        return "restarting" if self.started else "loading"

    @property
    def copies(self) -> int:
        """Admission counts every live replica's engine slots and queue."""
        return max(1, self.live_replicas)

    def sampling_checks(self) -> tuple:
        return self._sampling_checks

    async def start(self) -> None:
        """The format and tokenizer read here from the model (as a replica reads them); the context length and
        the engine configs from the first replica that answers, once its engine is up (every replica's are the
        same: one variant config, one vLLM version across the cluster)."""
        from transformers import AutoTokenizer

        self.tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, self.variant.path)
        self.format = await asyncio.to_thread(self.detect_format, self.tokenizer)  # (renders the template)
        self.check_tool_parser()
        described = await self.handle.describe.remote()
        self.max_model_len, self._sampling_checks = described["max_model_len"], described["sampling_checks"]
        await self.refresh()
        self.started = True

    async def refresh(self) -> None:
        """How many replicas of the deployment are running: from the handle's router at every call (the watchdog's,
        every half second), or else from Ray Serve's controller (asked every `REFRESH_SECONDS` while the count may
        be changing, else every `STEADY_REFRESH_SECONDS`)."""
        from ray import serve

        routable = routable_replicas(self.handle)
        if routable is not None:
            self.live_replicas = routable
            return
        now = asyncio.get_running_loop().time()
        unsettled = now < self._unsettled_until or self.live_replicas == 0
        if now - self._refreshed < (REFRESH_SECONDS if unsettled else STEADY_REFRESH_SECONDS):
            return
        self._refreshed = now
        try:
            status = await asyncio.wait_for(asyncio.to_thread(serve.status), 10)
            deployment = status.applications[self.app_name].deployments[self.name]
            live = deployment.replica_states.get("RUNNING", 0)
            if live != self.live_replicas or not self._counted:
                self.unsettle()
            self.live_replicas = live
            self._counted = True
        except Exception as error:  # the controller restarting, the application being deleted: keep the last count
            if self._counted:  # (said once, not every half second)
                logger.warning("variant %s: no replica count from Ray Serve: %r", self.name, error)
            self._counted = False

    async def stream(
        self, request_id: str, prompt_ids: list[int], sampling, thinking_off: bool = False
    ) -> AsyncIterator[tuple[int, Chunk]]:
        """The replica's (choice index, chunk)s. A replica (or its engine) that dies before the request produced
        anything costs the request nothing: it is sent to another. One that dies mid-generation ends it with a 503
        (retry); so does a replica that cannot be reached but may be alive (sending the request elsewhere could
        run it twice)."""
        from ray.exceptions import ActorDiedError, RayActorError, RayTaskError
        from ray.serve.exceptions import RayServeException

        for attempt in range(RETRIES + 1):
            produced = done = False
            chunks = self.handle.options(stream=True).generate.remote(request_id, prompt_ids, sampling, thinking_off)
            try:
                async for made in chunks:  # (a list: what the replica's engine made since the last one)
                    produced = True
                    for index, chunk in made:
                        yield index, chunk
                done = True
                return
            except ActorDiedError:
                if produced or attempt == RETRIES:
                    raise self._unavailable() from None
                self.unsettle()  # (retried: `_unavailable` is not reached)
                logger.warning("variant %s: a replica died before request %s started; retrying", self.name, request_id)
            except RayTaskError as error:  # raised on the replica: its engine died, or the generation failed
                if type(error.cause).__name__ != "EngineDeadError":
                    raise error.cause from None
                if produced or attempt == RETRIES:
                    raise self._unavailable() from None
                self.unsettle()
                logger.warning("variant %s: an engine died before request %s started; retrying", self.name, request_id)
            except (RayActorError, RayServeException):  # unreachable, perhaps alive; or no replica to send it to
                raise self._unavailable() from None
            finally:
                if not done:  # a client that went away, or a failure: the replica aborts the generation
                    with contextlib.suppress(Exception):
                        chunks.cancel()

    def unsettle(self) -> None:
        """Count the replicas often for a while: one failed or the count changed."""
        self._unsettled_until = asyncio.get_running_loop().time() + UNSETTLED_SECONDS

    def _unavailable(self) -> APIError:
        self.unsettle()  # (every failure that reaches a request passes here)
        return APIError(
            503,
            f"the replica of '{self.name}' serving this request died; retry",
            code="engine_unavailable",
            retry_after=2,
        )

    def shutdown(self) -> None:
        pass  # Ray Serve stops the replicas
