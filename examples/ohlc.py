"""OHLC candles end to end: a tick producer, the candle consumer, and a candle printer.

Run: streammachine run examples/ohlc.py:app     (candles every second, and every 5 seconds)

The consumer reads `ticks` in batches, and in one atomic commit per batch acks them, writes the
candles they completed to `candles_1s` / `candles_5s` and saves its state: a crash never loses or
duplicates a candle. `clock="wall"` also completes candles when the feed goes quiet.
"""

import random
import time

from streammachine import App, Message

app = App(name="ohlc_realtime")
consumer = app.ohlc(
    "ticks",
    output_stream_prefix="candles",
    intervals=["1s", "5s"],
    timestamp_field="ts",
    clock="wall",
)
prices = {"AAPL": 190.0, "MSFT": 420.0}


@app.timer(0.1)
async def ticks() -> None:
    now_ms = int(time.time() * 1000)
    batch = []
    for symbol in prices:
        prices[symbol] *= 1 + random.gauss(0, 0.0005)
        batch.append(
            {"symbol": symbol, "price": round(prices[symbol], 2), "volume": 100, "ts": now_ms}
        )
    await app.send_batch("ticks", batch)


@app.agent("candles_1s", group="printer")
async def show(record: Message) -> None:
    c = record.message
    print(
        f"{c['symbol']:5s} 1s  O {c['open']:>8s} H {c['high']:>8s} L {c['low']:>8s} C {c['close']:>8s} n={c['trade_count']}"
    )


if __name__ == "__main__":
    app.start()
