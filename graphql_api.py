"""GraphQL beside the REST API: the same jobs, the same token, the same reads.

`POST /graphql` runs queries (`run_http`); the WebSocket `/graphql` speaks graphql-transport-ws
(graphql_socket.serve_socket) and runs its operations through here too. The schema and its
resolvers are graphql_resolvers'; this module takes a request to an answer: the document
parsed, checked and validated, the operation run, the errors made public.

A hostile query is refused before it costs anything: the body, the query's length and tokens
are capped while it is parsed, then its depth, fields and aliases are counted (fragments
expanded, within a budget) before graphql-core validates it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import structlog
from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    execute,
    get_operation_ast,
    parse,
    validate,
)
from graphql.execution.values import get_variable_values

import auth
import core
import offload
from graphql_resolvers import SCHEMA, Context, LineErrorLoader, Services, snake_case_field

log = structlog.get_logger("api")

MAX_BODY_BYTES = 64 * 1024  # a request's JSON body, or one WebSocket message
MAX_QUERY_CHARS = 16 * 1024
MAX_TOKENS = 2000  # the standard introspection query has 163
MAX_DEPTH = 15  # fields nested in fields: the standard introspection query's depth
MAX_FIELDS = 300  # fields, fragment spreads and inline fragments, fragments expanded
MAX_ALIASES = 30
MAX_DEFINITIONS = 32  # operations and fragments in one document
INLINE_QUERY_CHARS = 256  # a document this short is checked on the event loop, longer on a thread
MAX_VALIDATION_ERRORS = 20
PROTOCOL = "graphql-transport-ws"
MAX_SUBSCRIPTIONS_PER_SOCKET = 16


class BadRequest(Exception):
    """Not a GraphQL-over-HTTP request at all (not a JSON object, no query string, …): 400."""


# --------------------------------------------------------------------------- HTTP


async def run_http(body: Any, services: Services, principal: auth.Principal) -> dict:
    """Run a query from a POST /graphql body; the answer is always a GraphQL response (errors
    included, status 200). BadRequest for a body that is not a GraphQL request."""
    query, variables, operation_name = request_parts(body)
    prepared, errors = await prepare_off_loop(query, variables, operation_name)
    structlog.contextvars.bind_contextvars(
        graphql_operation=prepared.label if prepared else operation_name or "refused"
    )
    if prepared and prepared.is_subscription:
        errors = [
            GraphQLError(
                "subscriptions are served over the WebSocket /graphql (graphql-transport-ws)"
            )
        ]
    if errors:
        return response(refused(errors))
    context = Context(services, principal, LineErrorLoader(services.pool))
    return response(await run(execute, prepared, context, variables))


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A document that parsed, stayed within the limits and validated, and its operation."""

    document: DocumentNode
    operation: OperationDefinitionNode
    operation_name: str | None

    @property
    def is_subscription(self) -> bool:
        return self.operation.operation == OperationType.SUBSCRIPTION

    @property
    def label(self) -> str:
        name = self.operation.name.value if self.operation.name else ""
        return f"{self.operation.operation.value} {name}".strip()


async def prepare_off_loop(
    query: str, variables: dict | None, operation_name: str | None
) -> tuple[Prepared | None, list[GraphQLError]]:
    """prepare(), on a CPU thread (offload) unless the document is tiny: validation is bounded
    by the limits but not linear (overlapping fields are compared pairwise), and the loop
    must go on answering meanwhile. offload.Busy when the CPU threads are all taken."""
    if len(query) <= INLINE_QUERY_CHARS:
        return prepare(query, variables, operation_name)
    return await offload.run(prepare, query, variables, operation_name)


def prepare(
    query: str, variables: dict | None, operation_name: str | None
) -> tuple[Prepared | None, list[GraphQLError]]:
    """The operation to run and no errors, or errors found before execution (the response
    then has no `data`): syntax, limits, validation, the operation's name, its variables."""
    document, errors = checked_document(query)
    if errors:
        return None, errors
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        return None, [
            GraphQLError(
                f"no operation named {operation_name[:64]!r}"
                if operation_name
                else "name the operation to run: operationName"
            )
        ]
    coerced = get_variable_values(
        SCHEMA,
        operation.variable_definitions or (),
        variables or {},
        max_errors=MAX_VALIDATION_ERRORS,
    )
    if isinstance(coerced, list):
        return None, coerced
    return Prepared(document, operation, operation_name), []


def request_parts(body: Any) -> tuple[str, dict | None, str | None]:
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object: {"query", "variables", "operationName"}')
    query, variables, name = body.get("query"), body.get("variables"), body.get("operationName")
    if not isinstance(query, str):
        raise BadRequest("`query` must be a string holding a GraphQL document")
    if variables is not None and not isinstance(variables, dict):
        raise BadRequest("`variables` must be an object (or null)")
    if name is not None and not isinstance(name, str):
        raise BadRequest("`operationName` must be a string (or null)")
    return query, variables, name


async def run(operate, prepared: Prepared, context: Context, variables):
    """execute() or subscribe(): awaited when a resolver is async (they all are)."""
    document, operation_name = prepared.document, prepared.operation_name
    result = operate(
        SCHEMA,
        document,
        context_value=context,
        variable_values=variables,
        operation_name=operation_name,
        field_resolver=snake_case_field,
    )
    return await result if asyncio.iscoroutine(result) or asyncio.isfuture(result) else result


def response(result: ExecutionResult) -> dict:
    """The GraphQL response: `errors` when there are any, `data` once execution started
    (null then when an error reached the root); a document that failed to parse or
    validate has no `data` (ExecutionResult's data is None and `executed` says which)."""
    body: dict[str, Any] = {}
    if result.errors:
        body["errors"] = [public_error(error) for error in result.errors]
    if not (result.extensions or {}).get("not_executed"):
        body["data"] = result.data
    return body


def refused(errors: list[GraphQLError]) -> ExecutionResult:
    """A result for a document that was never executed: errors and no `data`."""
    return ExecutionResult(None, errors, extensions={"not_executed": True})


def public_error(error: GraphQLError) -> dict:
    """The error as the spec formats it; what a resolver raised unexpectedly (a driver error,
    a bug) is logged and answered in plain words, never its text."""
    original = error.original_error
    if original is not None and not isinstance(original, GraphQLError):
        if core.is_outage(original):
            log.warning("graphql.unavailable", error=str(original)[:300])
            error = GraphQLError(
                "a service the API needs is unreachable; retry later",
                error.nodes,
                path=error.path,
                extensions={"code": "UNAVAILABLE"},
            )
        else:
            log.error("graphql.resolver_failed", error=repr(original)[:300], path=error.path)
            error = GraphQLError(
                "an unexpected error occurred",
                error.nodes,
                path=error.path,
                extensions={"code": "INTERNAL"},
            )
    return error.formatted


# --------------------------------------------------------------------------- limits


def checked_document(query: str):
    """The parsed document and no errors, or None and the errors: a syntax error, a limit
    exceeded, or what validation finds. Everything here is bounded by MAX_TOKENS."""
    try:
        document = parse(
            query, no_location=False, max_tokens=MAX_TOKENS, max_source_length=MAX_QUERY_CHARS
        )
    except GraphQLError as error:
        return None, [limit_message(error)]
    errors = size_errors(document) or document_size_errors(document)
    if not errors:
        errors = validate(SCHEMA, document, max_errors=MAX_VALIDATION_ERRORS)
    return (None, errors) if errors else (document, [])


def limit_message(error: GraphQLError) -> GraphQLError:
    """graphql-core's own words for its parse limits, with ours added."""
    text = error.message
    if "tokens" in text:
        text = f"the query has more than {MAX_TOKENS} tokens; refused"
    elif "code points" in text:
        text = f"the query is longer than {MAX_QUERY_CHARS} characters; refused"
    return GraphQLError(
        text, source=error.source, positions=error.positions, extensions=error.extensions or None
    )


def document_size_errors(document) -> list[GraphQLError]:
    """The document's definitions, fields and aliases, counted over every definition whether
    an operation uses it or not (validation walks them all, comparing fields pairwise), each
    fragment counted once where it is defined. Within MAX_FIELDS, MAX_ALIASES and MAX_DEPTH,
    as one operation must be."""
    if len(document.definitions) > MAX_DEFINITIONS:
        return [
            GraphQLError(
                f"the document has {len(document.definitions)} definitions, more "
                f"than {MAX_DEFINITIONS}; refused",
                extensions={"code": "QUERY_TOO_LARGE"},
            )
        ]
    tally = Tally()
    for definition in document.definitions:
        tally.walk(getattr(definition, "selection_set", None), 0, {}, frozenset())
    return [
        GraphQLError(text, extensions={"code": "QUERY_TOO_LARGE"})
        for text in tally.problems("the document", " (in all its definitions, used or not)")
    ]


def size_errors(document) -> list[GraphQLError]:
    """Depth, field and alias counts of each operation, its fragments expanded. The walk
    stops once over MAX_FIELDS, so fragments spread into each other many times cost no more
    than that."""
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    errors = []
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            tally = Tally()
            tally.walk(definition.selection_set, 0, fragments, frozenset())
            errors += tally.errors(definition)
    return errors


class Tally:
    """What one operation asks for, counted while walking it."""

    def __init__(self):
        self.depth = self.nodes = self.aliases = 0

    def walk(self, selection_set, depth: int, fragments: dict, spreading: frozenset) -> None:
        for selection in selection_set.selections if selection_set else ():
            self.nodes += 1
            if self.nodes > MAX_FIELDS:
                return
            if isinstance(selection, FieldNode):
                self.aliases += selection.alias is not None
                self.depth = max(self.depth, depth + 1)
                self.walk(selection.selection_set, depth + 1, fragments, spreading)
            elif isinstance(selection, InlineFragmentNode):
                self.walk(selection.selection_set, depth, fragments, spreading)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name in fragments and name not in spreading:  # cycles: validation's to report
                    self.walk(fragments[name].selection_set, depth, fragments, spreading | {name})

    def errors(self, operation: OperationDefinitionNode) -> list[GraphQLError]:
        return [
            GraphQLError(text, operation, extensions={"code": "QUERY_TOO_LARGE"})
            for text in self.problems("the operation", " (fragments expanded)")
        ]

    def problems(self, what: str, where: str = "") -> list[str]:
        found = []
        if self.nodes > MAX_FIELDS:
            found.append(f"{what} selects more than {MAX_FIELDS} fields{where}")
        if self.depth > MAX_DEPTH:
            found.append(f"{what} nests fields {self.depth} deep, more than {MAX_DEPTH}{where}")
        if self.aliases > MAX_ALIASES:
            found.append(f"{what} has {self.aliases} aliases, more than {MAX_ALIASES}{where}")
        return [f"{text}; refused" for text in found]
