// Renders /api/v1/openapi.json as a page: operations, parameters, bodies, responses, schemas.
// No framework and no build step; every string from the document goes in as text, not HTML.
"use strict";

const SPEC_URL = "/api/v1/openapi.json";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// Descriptions use `code` spans; render those and leave the rest as plain text.
function prose(text) {
  const p = el("p");
  String(text || "").split(/(`[^`]*`)/).forEach((piece) => {
    p.append(piece.startsWith("`") && piece.endsWith("`") && piece.length > 1
      ? el("code", {}, piece.slice(1, -1)) : piece);
  });
  return p;
}

function resolve(spec, ref) {
  return ref.replace(/^#\//, "").split("/").reduce((node, key) => node && node[key], spec);
}

function deref(spec, node) {
  return node && node.$ref ? resolve(spec, node.$ref) : node;
}

// A one-line type: "string (uuid) | null", "array of Job", "integer 1–100, default 20".
function typeOf(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if ("const" in schema) return JSON.stringify(schema.const);
  let type = [].concat(schema.type || "any").join(" | ");
  if (schema.type === "array") type = `array of ${typeOf(schema.items)}`;
  if (schema.enum) type += `: ${schema.enum.join(", ")}`;
  if (schema.format) type += ` (${schema.format})`;
  if ("minimum" in schema || "maximum" in schema) type += ` ${schema.minimum ?? ""}–${schema.maximum ?? ""}`;
  if ("default" in schema) type += `, default ${JSON.stringify(schema.default)}`;
  return type;
}

function parametersTable(spec, parameters) {
  if (!parameters || !parameters.length) return null;
  return [el("h4", {}, "Parameters"), el("table", {},
    el("tr", {}, el("th", {}, "Name"), el("th", {}, "In"), el("th", {}, "Type"), el("th", {}, "")),
    parameters.map((param) => {
      param = deref(spec, param);
      return el("tr", {}, el("td", {}, el("code", {}, param.name), param.required ? " *" : ""),
        el("td", {}, param.in), el("td", {}, typeOf(param.schema)), el("td", {}, prose(param.description)));
    }))];
}

function contentList(content) {
  return Object.entries(content || {}).map(([mediaType, media]) =>
    el("div", {}, el("code", {}, mediaType), " ", typeOf(media.schema)));
}

function requestBody(spec, body) {
  body = deref(spec, body);
  if (!body) return null;
  const parts = [el("h4", {}, "Request body", body.required ? " (required)" : "")];
  for (const [mediaType, media] of Object.entries(body.content || {})) {
    const schema = deref(spec, media.schema) || {};
    parts.push(el("div", {}, el("code", {}, mediaType)));
    if (schema.properties) parts.push(propertiesTable(schema));
  }
  return parts;
}

function responsesTable(spec, responses) {
  return [el("h4", {}, "Responses"), el("table", {},
    el("tr", {}, el("th", {}, "Status"), el("th", {}, "Body"), el("th", {}, "")),
    Object.entries(responses).map(([status, response]) => {
      response = deref(spec, response);
      const headers = Object.keys(response.headers || {}).map((h) => el("div", {}, "Header ", el("code", {}, h)));
      return el("tr", {}, el("td", {}, el("strong", {}, status)),
        el("td", {}, contentList(response.content), headers), el("td", {}, prose(response.description)));
    }))];
}

function webSocket(extension) {
  if (!extension) return null;
  const message = extension.messages && extension.messages.server;
  return [el("h4", {}, "WebSocket"),
    message ? el("div", {}, "Server messages: ", el("code", {}, message.contentType), " ", typeOf(message.schema)) : null,
    el("table", {}, el("tr", {}, el("th", {}, "Close code"), el("th", {}, "")),
      Object.entries(extension.closeCodes || {}).map(([code, meaning]) =>
        el("tr", {}, el("td", {}, el("strong", {}, code)), el("td", {}, prose(meaning)))))];
}

function operationCard(spec, path, method, op) {
  const id = op.operationId || `${method}-${path}`;
  return el("article", { class: "card op", id },
    el("h3", {}, el("span", { class: `method ${method}` }, method), el("span", { class: "path" }, path),
      el("span", { class: "muted" }, op.summary || "")),
    op.description ? prose(op.description) : null,
    parametersTable(spec, op.parameters),
    requestBody(spec, op.requestBody),
    responsesTable(spec, op.responses || {}),
    webSocket(op["x-websocket"]));
}

function propertiesTable(schema) {
  const required = new Set(schema.required || []);
  return el("table", {},
    el("tr", {}, el("th", {}, "Field"), el("th", {}, "Type"), el("th", {}, "")),
    Object.entries(schema.properties || {}).map(([name, prop]) =>
      el("tr", {}, el("td", {}, el("code", {}, name), required.has(name) ? " *" : ""),
        el("td", {}, typeOf(prop)), el("td", {}, prose(prop.description)))));
}

function schemaCard(name, schema) {
  return el("article", { class: "card schema", id: `schema-${name}` },
    el("h3", {}, name), schema.description ? prose(schema.description) : null,
    propertiesTable(schema),
    schema.example ? [el("h4", {}, "Example"), el("pre", {}, JSON.stringify(schema.example, null, 2))] : null);
}

async function main() {
  const operations = document.getElementById("operations");
  let spec;
  try {
    const response = await fetch(SPEC_URL);
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    spec = await response.json();
  } catch (err) {
    operations.replaceChildren(el("p", { class: "error" }, `Could not load ${SPEC_URL}: ${err.message}`));
    return;
  }
  document.getElementById("title").textContent = `${spec.info.title} ${spec.info.version}`;
  document.getElementById("summary").replaceChildren(prose(spec.info.description),
    el("p", { class: "muted" }, "OpenAPI ", spec.openapi, ": ", el("a", { href: SPEC_URL }, SPEC_URL)));

  const cards = [];
  const toc = [];
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const card = operationCard(spec, path, method, op);
      cards.push(card);
      toc.push(el("li", {}, el("a", { href: `#${card.id}` }, method.toUpperCase(), " ", path)));
    }
  }
  operations.replaceChildren(el("h2", {}, "Operations"), ...cards);
  document.getElementById("toc").replaceChildren(el("ul", {}, toc));
  const schemas = Object.entries((spec.components || {}).schemas || {});
  document.getElementById("schemas").replaceChildren(el("h2", {}, "Schemas"),
    ...schemas.map(([name, schema]) => schemaCard(name, schema)));
}

main();
