"""RabbitMQ: the job queue and its dead-letter and retry queues, the properties of every message
we publish, and the API's publisher (the worker consumes in worker.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import pika

import config
import core


def amqp_parameters(settings: config.Settings, process: str):
    """pika connection parameters from AMQP_URL, named after the process (shown by RabbitMQ's
    management UI and `rabbitmqctl list_connections`)."""
    params = pika.URLParameters(settings.amqp_url)
    params.client_properties = {"connection_name": core.process_name(process)}
    return params


def declare_queues(channel, queue: str) -> None:
    """The durable job queue, its dead-letter queue (rejected messages land there) and its
    retry queue (a message parked there returns to the job queue when its expiration is up).

    The API and the worker both declare them, with the same arguments, so either may start first.
    """
    channel.queue_declare(queue=dead_letter_queue(queue), durable=True)
    channel.queue_declare(
        queue=retry_queue(queue),
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue},
    )
    channel.queue_declare(
        queue=queue,
        durable=True,
        arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead_letter_queue(queue),
        },
    )


def dead_letter_queue(queue: str) -> str:
    return f"{queue}.dead"


def retry_queue(queue: str) -> str:
    return f"{queue}.retry"


def message_properties(expiration_s: float | None = None, *, traceparent: str | None = None):
    """The properties of every message we publish: JSON, persistent (it survives a broker
    restart in a durable queue), optionally expiring after `expiration_s`, and with the W3C
    `traceparent` header of the trace it continues, if any."""
    return pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        expiration=None if expiration_s is None else str(int(expiration_s * 1000)),
        headers={"traceparent": traceparent} if traceparent else None,
    )


# --------------------------------------------------------------------------- the API's publisher


class BrokerUnavailable(Exception):
    """RabbitMQ could not be reached, or did not confirm a message."""


class Publisher:
    """Publishes job messages with publisher confirms.

    pika is blocking and not thread-safe, so one dedicated thread owns its connection and
    every call runs there; the event loop only awaits the result. After a failed connect the
    next attempt waits for a backoff delay (up to 5 s); meanwhile the broker counts as
    unavailable at once, so uploads are refused quickly rather than each waiting for a timeout.
    """

    def __init__(self, settings: config.Settings):
        self.settings = settings
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="amqp")
        self.connection: pika.BlockingConnection | None = None
        self.channel = None
        self.backoff = core.Backoff(cap=5.0)
        self.next_connect = 0.0  # time.monotonic() before which no connect is tried

    async def publish(self, body: bytes, traceparent: str | None = None) -> None:
        await self._run(self._publish, body, traceparent)

    async def is_available(self) -> bool:
        try:
            await self.check()
            return True
        except BrokerUnavailable:
            return False

    async def check(self) -> None:
        await self._run(self._ensure_channel)

    async def close(self) -> None:
        await self._run(self._disconnect)
        self.executor.shutdown(wait=True)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _publish(self, body: bytes, traceparent: str | None) -> None:
        for attempt in (1, 2):  # a connection idle too long may be gone: reconnect once
            channel = self._ensure_channel()
            try:
                channel.basic_publish(
                    exchange="",
                    routing_key=self.settings.queue,
                    body=body,
                    mandatory=True,
                    properties=message_properties(traceparent=traceparent),
                )
                return
            except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
                raise BrokerUnavailable(f"the broker did not accept the message: {exc!r}") from exc
            except pika.exceptions.AMQPError as exc:
                self._disconnect()
                if attempt == 2:
                    raise BrokerUnavailable(repr(exc)) from exc

    def _ensure_channel(self):
        """The open channel, reconnecting if the broker closed the connection meanwhile."""
        if self._channel_alive():
            return self.channel
        self._disconnect()
        if time.monotonic() < self.next_connect:
            raise BrokerUnavailable("RabbitMQ was unreachable a moment ago")
        try:
            params = amqp_parameters(self.settings, "api")
            params.connection_attempts = 1
            params.socket_timeout = 3
            params.blocked_connection_timeout = 10
            self.connection = pika.BlockingConnection(params)
            self.channel = self.connection.channel()
            self.channel.confirm_delivery()
            declare_queues(self.channel, self.settings.queue)
        except pika.exceptions.AMQPError as exc:
            self._disconnect()
            self.next_connect = time.monotonic() + self.backoff.next()
            raise BrokerUnavailable(f"cannot reach RabbitMQ: {exc!r}") from exc
        self.backoff.reset()
        return self.channel

    def _channel_alive(self) -> bool:
        if self.channel is None or not self.channel.is_open:
            return False
        try:
            self.connection.process_data_events(time_limit=0)  # notices a closed socket
        except pika.exceptions.AMQPError:
            return False
        return self.channel.is_open

    def _disconnect(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError:
                pass
