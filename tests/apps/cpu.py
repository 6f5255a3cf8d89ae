"""A consumer whose handler burns a fixed amount of CPU, for the scaling benchmark."""

import hashlib
import os

from streammachine import App, Message

app = App(name="cpu")
ROUNDS = int(os.environ.get("CPU_ROUNDS", "60"))
PARTITIONS = int(os.environ.get("CPU_PARTITIONS", "0")) or None


@app.agent("work", group="cpu", count=100, partitions=PARTITIONS)
async def burn(record: Message) -> None:
    digest = record.message["n"].encode()
    for _ in range(ROUNDS):  # ~0.5 µs a round: CPU-bound work, so Redis is not the limit
        digest = hashlib.sha256(digest).digest()
