"""Health: a timer reports the app's health.

Run: streammachine run examples/health.py:app
"""

from streammachine import App

app = App(name="health_example")


@app.timer(30)
async def health_monitor() -> None:
    health = await app.health_check()
    # {"status": "healthy" | "degraded", "redis": "connected" | "disconnected",
    #  "active_tasks": N, "registered_agents": N, "registered_timers": N}
    print(f"Health: {health}")


if __name__ == "__main__":
    app.start()
