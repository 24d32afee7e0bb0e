"""The client's in-flight limit: how it grows with a link's round trip, and the order in which
waiting requests go (a run's sequential steps before queued metric batches). No server needed:
this is the client's own logic."""

import asyncio

from importer.mlflow_api import ClientConfig, _Slots, in_flight_for


def test_in_flight_grows_with_the_round_trip_up_to_the_scale():
    config = ClientConfig(max_in_flight=8)
    assert [in_flight_for(config, rtt) for rtt in (0.0, 0.004, 0.05, 0.12, 0.2, 5.0)] == [8, 8, 16, 24, 32, 32]
    assert in_flight_for(ClientConfig(max_in_flight=8, latency_scale=1), 0.3) == 8


def test_waiting_steps_go_before_waiting_batches_and_a_cancelled_waiter_frees_nothing():
    async def scenario() -> list[str]:
        slots, order = _Slots(1), []
        await slots.acquire()  # the one slot is taken

        async def wait(name: str, bulk: bool) -> None:
            await slots.acquire(bulk)
            order.append(name)

        batch = asyncio.ensure_future(wait("batch", True))
        gone = asyncio.ensure_future(wait("gone", False))
        step = asyncio.ensure_future(wait("step", False))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        slots.release()  # the step goes first, though the batch came earlier
        await asyncio.sleep(0)
        assert order == ["step"] and slots.busy == 1
        slots.release()
        await asyncio.sleep(0)
        assert order == ["step", "batch"] and slots.busy == 1
        slots.release()
        slots.grow(3)
        assert slots.busy == 0 and slots.limit == 3
        await asyncio.gather(batch, step)
        return order

    assert asyncio.run(scenario()) == ["step", "batch"]
