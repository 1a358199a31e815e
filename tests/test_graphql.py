"""The GraphQL endpoint: the same jobs as REST, its limits, ownership, and subscriptions over
graphql-transport-ws riding on the API's LISTEN fan-out."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid

import aiohttp
import pytest

import core
import eventhorizon
import graphql_api
from conftest import bearer
from test_api import VALID, jsonl, upload, client, listener_listening  # noqa: F401  (fixtures)

JOB_FIELDS = """id fileName sizeBytes status linesTotal linesProcessed linesValid linesInvalid
  progress createdAt startedAt completedAt error format formats { name lines }"""


async def gql(client, query: str, variables: dict | None = None, **extra) -> dict:
    response = await client.post("/graphql", json={"query": query, "variables": variables,
                                                   **extra})
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


async def test_smoke(client):
    job = await (await upload(client, jsonl(VALID) + b"nope\n")).json()
    body = await gql(client, f'query($id: ID!) {{ job(id: $id) {{ {JOB_FIELDS} errors {{ items {{ lineNo reason }} nextAfterLine }} }} jobs {{ id }} }}',
                     {"id": job["job_id"]})
    print(body)
    assert "errors" not in body
