"""The scheduler at 100,000 cron triggers, side by side with APScheduler 3.x in the same run.

Kairos: the triggers are written straight into the `kairos_triggers` KV bucket (what the registry's outbox
does), then `python -m kairos.scheduler` starts as a subprocess. Figures:
- ready: from spawning the process until its heartbeat shows all 64 shards held and every trigger planned;
- RSS: the scheduler's VmRSS once ready;
- lag: 1,000 one-shot triggers due within the same second; lag is the time JetStream stored the fire (the
  server's timestamp in the message metadata; the ack is sent right after) minus its scheduled instant;
- burst: 100,000 one-shot triggers due at the same instant, until JetStream holds all 100,000 fires.
APScheduler: an AsyncIOScheduler in its own process loads the same 100,000 cron jobs (time to load, VmRSS)
and runs 1,000 date jobs due within one second (lag: the job starts minus its run date; no publish).
Ratios `scheduler.<x>.vs.apscheduler` are APScheduler's figure divided by Kairos's: above 1, Kairos is ahead.
Note: APScheduler's ready time starts after its interpreter is up; Kairos's includes process start-up and
reading the bucket. `BENCH_SCHEDULER_TRIGGERS` scales the run down for a quick check (the figure names keep
"100k"); `BENCH_SCHEDULER_LOG_DIR` keeps the scheduler's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

FIGURES = (
    "scheduler.ready_100k_s",
    "scheduler.rss_mb",
    "scheduler.lag_p50_ms",
    "scheduler.lag_p99_ms",
    "scheduler.burst_100k_acked_s",
    "scheduler.apscheduler.ready_100k_s",
    "scheduler.apscheduler.rss_mb",
    "scheduler.apscheduler.lag_p50_ms",
    "scheduler.apscheduler.lag_p99_ms",
    "scheduler.ready_100k_s.vs.apscheduler",
    "scheduler.rss_mb.vs.apscheduler",
    "scheduler.lag_p50_ms.vs.apscheduler",
    "scheduler.lag_p99_ms.vs.apscheduler",
)
TRIGGERS = int(os.environ.get("BENCH_SCHEDULER_TRIGGERS", 100_000))
LAG_TRIGGERS = 1_000
BURST_TRIGGERS = TRIGGERS
REPLICA_ID = "bench"
# Realistic variety: business hours, nightly jobs, reports, every-few-hours syncs, macros.
EXPRESSIONS = (
    "0 9 * * 1-5",
    "30 8 * * 1-5",
    "0 17 * * 1-5",
    "0 0 * * *",
    "30 2 * * *",
    "15 3 * * *",
    "0 6 * * *",
    "0 12 * * *",
    "0 18 * * *",
    "0 22 * * 1-5",
    "0 */6 * * *",
    "0 */4 * * *",
    "0 */12 * * *",
    "20 */3 * * *",
    "0 9 * * 1",
    "0 10 * * 5",
    "0 8 1 * *",
    "0 7 1,15 * *",
    "0 0 1 1 *",
    "45 23 L * *",
    "0 9 * * MON#1",
    "0 9,13,17 * * *",
    "0 8-18/2 * * 1-5",
    "5 4 * * SUN",
    "@daily",
    "@weekly",
    "@monthly",
    "0 11 * * 2,4",
    "10 1 * * 6",
    "0 14 10 * *",
)
ZONES = (
    "UTC",
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "America/Mexico_City",
    "America/Toronto",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Paris",
    "Europe/Madrid",
    "Europe/Moscow",
    "Europe/Istanbul",
    "Africa/Lagos",
    "Africa/Johannesburg",
    "Asia/Dubai",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Shanghai",
    "Asia/Tokyo",
    "Asia/Seoul",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Pacific/Auckland",
    "Pacific/Apia",
)


def cron_of(index: int) -> tuple[str, str]:
    return EXPRESSIONS[index % len(EXPRESSIONS)], ZONES[(index * 7 + index // 97) % len(ZONES)]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def rss_mb(pid: int | str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


# ------------------------------------------------------------------------------------------------ Kairos


async def _write_triggers(nc, workspace: str, count: int, fill) -> None:
    """Publishes `count` triggers into kairos_triggers (fast: core publishes, then waits for the stream)."""
    from kairos.v1 import trigger_pb2

    js = nc.jetstream()
    before = (await js.stream_info("KV_kairos_triggers")).state.messages
    now = datetime.now(UTC)
    for index in range(count):
        trigger_id = f"t_{index:06d}"
        trigger = trigger_pb2.Trigger(
            name=f"workspaces/{workspace}/triggers/{trigger_id}",
            state=trigger_pb2.TriggerState.TRIGGER_STATE_ACTIVE,
            revision=1,
        )
        trigger.action.agent = "agents/bench"
        trigger.action.prompt = "bench"
        trigger.create_time.FromDatetime(now)
        trigger.update_time.FromDatetime(now)
        fill(index, trigger.source.schedule)
        await nc.publish(f"$KV.kairos_triggers.{workspace}.{trigger_id}", trigger.SerializeToString())
        if index % 5000 == 4999:
            await nc.flush()
    await nc.flush()
    await _poll(lambda: _stream_holds(js, "KV_kairos_triggers", before + count))


async def _poll(check, interval: float = 0.05) -> None:
    """Polls server state that has no event of its own (bound it with asyncio.timeout)."""
    while True:
        if await check():
            return
        await asyncio.sleep(interval)


async def _stream_holds(js, stream: str, messages: int) -> bool:
    return (await js.stream_info(stream)).state.messages >= messages


async def _burst_stored(js) -> bool:
    return (await js.consumer_info("KAIROS_FIRES", "bench_burst")).num_pending >= BURST_TRIGGERS


async def _heartbeat(kv) -> dict:
    import nats.js.errors

    try:
        return json.loads((await kv.get(f"_replica.{REPLICA_ID}")).value)
    except nats.js.errors.KeyNotFoundError:
        return {}


async def _wait_scheduled(kv, count: int, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while True:
            status = await _heartbeat(kv)
            if len(status.get("shards", [])) == 64 and status.get("scheduled_triggers", 0) >= count:
                return
            await asyncio.sleep(0.05)


async def _kairos(data: Path) -> dict[str, float]:
    import nats.errors
    from nats.js.api import AckPolicy, ConsumerConfig

    from kairos.core import messaging
    from kairos.core.natsserver import EmbeddedNatsServer, free_port
    from kairos.v1 import fire_pb2

    results: dict[str, float] = {}
    async with EmbeddedNatsServer(data / "nats") as server:
        nc = await messaging.connect(server.url, "bench")
        js = nc.jetstream()
        buckets = await messaging.ensure_all(js)

        def cron(index, schedule) -> None:
            schedule.cron.expression, schedule.timezone = cron_of(index)

        await _write_triggers(nc, "bench", TRIGGERS, cron)
        env = {
            **os.environ,
            "KAIROS_NATS_URL": server.url,
            "KAIROS_GRPC_PORT": str(free_port()),
            "KAIROS_SCHEDULER_REPLICA_ID": REPLICA_ID,
            "KAIROS_LOG_LEVEL": "info",
        }
        log = (Path(os.environ.get("BENCH_SCHEDULER_LOG_DIR", data)) / "scheduler.log").open("wb")
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kairos.scheduler", env=env, stdout=log, stderr=log
        )
        try:
            await _wait_scheduled(buckets.scheduler, TRIGGERS, 120)
            results["scheduler.ready_100k_s"] = time.perf_counter() - started
            results["scheduler.rss_mb"] = rss_mb(process.pid)

            due = math.ceil(time.time()) + 4

            def one_shot_in_second(index, schedule) -> None:
                schedule.one_shot.fire_time.FromDatetime(datetime.fromtimestamp(due + index / LAG_TRIGGERS, UTC))

            lag_fires = await js.pull_subscribe(
                "kairos.fire.lag.>", stream=messaging.FIRES_STREAM, config=ConsumerConfig(ack_policy=AckPolicy.NONE)
            )
            await _write_triggers(nc, "lag", LAG_TRIGGERS, one_shot_in_second)
            lags: list[float] = []
            async with asyncio.timeout(60):
                while len(lags) < LAG_TRIGGERS:
                    with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
                        for message in await lag_fires.fetch(LAG_TRIGGERS - len(lags), timeout=1.0):
                            fire = fire_pb2.FireRequest.FromString(message.data)
                            stored = message.metadata.timestamp.timestamp()
                            lags.append((stored - fire.scheduled_time.ToDatetime(UTC).timestamp()) * 1000)
            await lag_fires.unsubscribe()
            results["scheduler.lag_p50_ms"] = percentile(lags, 0.5)
            results["scheduler.lag_p99_ms"] = percentile(lags, 0.99)

            await js.add_consumer(
                messaging.FIRES_STREAM,
                ConsumerConfig(
                    durable_name="bench_burst", filter_subject="kairos.fire.burst.>", ack_policy=AckPolicy.NONE
                ),
            )
            burst_at = math.ceil(time.time()) + 5 + 25 * BURST_TRIGGERS // 100_000

            def one_shot_at_once(index, schedule) -> None:
                schedule.one_shot.fire_time.FromDatetime(datetime.fromtimestamp(burst_at, UTC))

            await _write_triggers(nc, "burst", BURST_TRIGGERS, one_shot_at_once)
            await _wait_scheduled(buckets.scheduler, TRIGGERS + LAG_TRIGGERS + BURST_TRIGGERS, 60)
            if time.time() >= burst_at:
                raise RuntimeError("the burst triggers were not planned before their instant; raise the lead time")
            async with asyncio.timeout(120):
                await _poll(lambda: _burst_stored(js))
            results["scheduler.burst_100k_acked_s"] = time.time() - burst_at
        finally:
            process.terminate()
            try:
                async with asyncio.timeout(30):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
                raise RuntimeError(f"the scheduler did not stop within 30 s of SIGTERM; see {log.name}") from None
            log.close()
            await nc.close()
    return results


# ------------------------------------------------------------------------------------------- APScheduler


def _apscheduler_process() -> None:
    """Runs in its own process: prints one JSON line with APScheduler's figures."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.date import DateTrigger

    async def main() -> dict[str, float]:
        scheduler = AsyncIOScheduler(timezone="UTC")
        scheduler.start()
        started = time.perf_counter()
        for index in range(TRIGGERS):
            expression, zone = cron_of(index)
            if expression.startswith("@"):
                expression = {"@daily": "0 0 * * *", "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *"}[expression]
            if expression.endswith("MON#1"):  # APScheduler spells `weekday#n` as a day-of-month item
                trigger = CronTrigger(minute=0, hour=9, day="1st mon", timezone=zone)
            else:
                trigger = CronTrigger.from_crontab(expression.replace(" L ", " last "), timezone=zone)
            scheduler.add_job(noop, trigger, id=f"c{index}")
        ready = time.perf_counter() - started
        rss = rss_mb("self")
        lags: list[float] = []
        done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def record(scheduled: float) -> None:
            lags.append((time.time() - scheduled) * 1000)
            if len(lags) == LAG_TRIGGERS:
                loop.call_soon_threadsafe(done.set)

        due = math.ceil(time.time()) + 4
        for index in range(LAG_TRIGGERS):
            at = due + index / LAG_TRIGGERS
            trigger = DateTrigger(run_date=datetime.fromtimestamp(at, UTC))
            scheduler.add_job(record, trigger, args=[at], id=f"d{index}", misfire_grace_time=None)
        await asyncio.wait_for(done.wait(), 120)
        scheduler.shutdown(wait=False)
        return {
            "scheduler.apscheduler.ready_100k_s": ready,
            "scheduler.apscheduler.rss_mb": rss,
            "scheduler.apscheduler.lag_p50_ms": percentile(lags, 0.5),
            "scheduler.apscheduler.lag_p99_ms": percentile(lags, 0.99),
        }

    print(json.dumps(asyncio.run(main())), flush=True)


def noop() -> None:
    """The cron jobs never fire during the benchmark; APScheduler needs a callable."""


async def _apscheduler() -> dict[str, float]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "apscheduler", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"APScheduler benchmark failed: {stderr.decode()[-2000:]}")
    return json.loads(stdout.decode().strip().splitlines()[-1])


async def run(report) -> None:
    from kairos.core.log import configure_logging

    configure_logging("json", "error")
    with tempfile.TemporaryDirectory() as scratch:
        kairos = await _kairos(Path(scratch))
    peer = await _apscheduler()
    for name, value in kairos.items():
        report(name, value, "MB" if name.endswith("_mb") else "ms" if name.endswith("_ms") else "s")
    for name, value in peer.items():
        report(name, value, "MB" if name.endswith("_mb") else "ms" if name.endswith("_ms") else "s")
    for figure in ("ready_100k_s", "rss_mb", "lag_p50_ms", "lag_p99_ms"):
        ours, theirs = kairos[f"scheduler.{figure}"], peer[f"scheduler.apscheduler.{figure}"]
        report(f"scheduler.{figure}.vs.apscheduler", theirs / ours if ours else math.inf, "x")


if __name__ == "__main__" and sys.argv[1:] == ["apscheduler"]:
    _apscheduler_process()
