"""OpenTelemetry tracing: a span per handled message and per send, joined into one trace by a
W3C `traceparent` field that travels with the message through every stage of a pipeline.

Active only when `opentelemetry-api` is installed (extra `otel`) and the application configured a
tracer provider (e.g. the OpenTelemetry SDK); otherwise nothing is imported or added per message.

Example:
    >>> from opentelemetry import trace  # doctest: +SKIP
    >>> from opentelemetry.sdk.trace import TracerProvider  # doctest: +SKIP
    >>> trace.set_tracer_provider(TracerProvider())  # doctest: +SKIP
    >>> app.start()  # every handled message and send is now a span  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .message import Message

__all__ = ["Tracing", "get_tracing"]

TRACEPARENT = "traceparent"


class Tracing:
    """Spans for one App: `wrap` a handler, `inject` the current trace into outgoing fields."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import propagate, trace

        self._tracer = tracer
        self._propagate = propagate
        self._kind = trace.SpanKind

    def wrap(
        self, fn: Callable[[Message], Awaitable[Any]], stream: str, group: str
    ) -> Callable[[Message], Awaitable[Any]]:
        """`fn` running inside a consumer span that continues the message's trace."""
        tracer, extract, consumer = self._tracer, self._propagate.extract, self._kind.CONSUMER

        async def traced(msg: Message) -> Any:
            parent = extract(msg.message) if TRACEPARENT in msg.message else None
            attributes = {
                "messaging.system": "redis",
                "messaging.destination.name": stream,
                "messaging.consumer.group.name": group,
                "messaging.message.id": msg.key or "",
            }
            with tracer.start_as_current_span(
                f"process {stream}", context=parent, kind=consumer, attributes=attributes
            ):
                return await fn(msg)

        return traced

    def inject(self, topic: str, fields: MutableMapping[Any, Any]) -> None:
        """Record a producer span for a send and put its `traceparent` into `fields`."""
        if TRACEPARENT in fields:
            return
        attributes = {"messaging.system": "redis", "messaging.destination.name": topic}
        with self._tracer.start_as_current_span(
            f"send {topic}", kind=self._kind.PRODUCER, attributes=attributes
        ):
            carrier: dict[str, str] = {}
            self._propagate.inject(carrier)
            fields.update(carrier)


def get_tracing() -> Tracing | None:
    """Tracing when opentelemetry is installed and a real tracer provider is configured."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if type(provider).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider"):
        return None
    from . import __version__

    return Tracing(provider.get_tracer("streammachine", __version__))
