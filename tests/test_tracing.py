"""OpenTelemetry: a span per handled message and per send, one trace through a pipeline.

The provider the first test sets is removed again after it (see the `spans` fixture).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streammachine import App, Message
from streammachine.testing import TestApp

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="needs opentelemetry-sdk (dev)")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

pytestmark = pytest.mark.anyio
_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = otel_sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()
    # The global provider can be set once per process; undo it (as opentelemetry's own test
    # utilities do) so the tests after these run without tracing.
    from opentelemetry.util._once import Once

    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]


async def test_no_tracer_provider_means_no_spans_and_no_field(redis_url: str) -> None:
    from streammachine.tracing import get_tracing

    assert get_tracing() is None
    app = App(name="plain")

    @app.agent("s", group="g")
    async def h(record: Message) -> None: ...

    async with TestApp(app, url=redis_url) as t:
        await app.send("s", {"x": 1})
        await t.run_until_idle()
        assert [m.message for m in await t.stream("s")] == [{"x": "1"}]


async def test_one_trace_follows_a_message_through_a_pipeline(
    redis_url: str, spans: InMemorySpanExporter
) -> None:
    app = App(name="traced")
    seen: list[str] = []

    @app.agent("stage1", group="g1")
    async def stage1(record: Message) -> None:
        await app.send("stage2", {"value": int(record.message["value"]) * 2})

    @app.agent("stage2", group="g2")
    async def stage2(record: Message) -> None:
        seen.append(record.message["traceparent"])
        if record.message["value"] == "0":
            raise ValueError("recorded on the span")

    async with TestApp(app, url=redis_url) as t:
        await app.send("stage1", {"value": 21})
        await t.run_until_idle()
    names = [s.name for s in spans.get_finished_spans()]
    assert names == ["send stage1", "send stage2", "process stage1", "process stage2"]
    by_name = {s.name: s for s in spans.get_finished_spans()}
    trace_ids = {s.context.trace_id for s in by_name.values()}
    assert len(trace_ids) == 1, "one trace from the first send to the last handler"
    assert by_name["process stage1"].parent.span_id == by_name["send stage1"].context.span_id
    assert by_name["send stage2"].parent.span_id == by_name["process stage1"].context.span_id
    assert by_name["process stage2"].parent.span_id == by_name["send stage2"].context.span_id
    assert by_name["process stage2"].attributes["messaging.consumer.group.name"] == "g2"
    assert seen and seen[0].startswith("00-")
