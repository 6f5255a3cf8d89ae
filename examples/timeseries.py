"""Time series: keep the last 5 minutes of ticks in a DataFrame and print a rolling mean.

Run: streammachine run examples/timeseries.py:app

The agent takes whole batches (`batch=True`), turns each into a DataFrame with
`streams_to_dataframe_fast` (one column per field, `value` converted to float), and appends it to
a `TimeSeriesBuffer` that drops rows older than 5 minutes.
"""

import random

from streammachine import App, Message, TimeSeriesBuffer, streams_to_dataframe_fast

app = App(name="timeseries_example")
buffer = TimeSeriesBuffer(max_age_seconds=300)  # 5 minutes


@app.timer(1)
async def source() -> None:
    await app.send_batch("ticks", [{"value": round(random.gauss(100, 5), 2)} for _ in range(10)])


@app.agent("ticks", group="analytics", batch=True)
async def analyze(records: list[Message]) -> None:
    # Accumulate recent data: the batch as XREAD-shaped input, one row per entry.
    df = streams_to_dataframe_fast(
        [("ticks", [r.data for r in records])], dtypes={"value": "float64"}
    )
    buffer.append(df)
    recent_df = buffer.get()
    if len(recent_df) > 0:
        # Run analytics on recent window
        mean_val = recent_df["value"].mean()
        print(f"Rolling mean: {mean_val:.2f} over {len(recent_df)} ticks")


if __name__ == "__main__":
    app.start()
