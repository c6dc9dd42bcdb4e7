// Renders the OpenAPI document served by this server; no request leaves it.
"use strict";

function element(tag, attributes, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attributes || {})) node.setAttribute(k, v);
  for (const child of children || []) {
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function schemaName(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.type === "array") return schemaName(schema.items) + "[]";
  return schema.type || "object";
}

function render(doc) {
  const main = document.getElementById("operations");
  const toc = document.getElementById("toc");
  main.textContent = "";
  const byTag = new Map();
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags && op.tags[0]) || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push({ path, method, op });
    }
  }
  for (const [tag, ops] of byTag) {
    main.append(element("h2", { id: "tag-" + tag }, [tag]));
    for (const { path, method, op } of ops) {
      const id = (method + path).replace(/[^a-zA-Z0-9]+/g, "-");
      toc.append(element("a", { href: "#" + id }, [method.toUpperCase() + " " + path]));
      const section = element("section", { class: "op", id }, [
        element("h3", {}, [element("span", { class: "method " + method }, [method]), element("code", {}, [path])]),
        element("p", {}, [op.summary || ""]),
      ]);
      if (op.parameters && op.parameters.length) {
        const rows = op.parameters.map((p) =>
          element("tr", {}, [element("td", {}, [element("code", {}, [p.name])]), element("td", {}, [p.in]),
            element("td", {}, [schemaName(p.schema)]), element("td", {}, [p.description || ""])]));
        section.append(element("table", {}, [element("tr", {}, ["name", "in", "type", "meaning"].map((h) => element("th", {}, [h]))), ...rows]));
      }
      const body = op.requestBody && op.requestBody.content && Object.values(op.requestBody.content)[0];
      if (body) section.append(element("p", {}, ["Body: ", element("code", {}, [schemaName(body.schema)])]));
      const responses = Object.entries(op.responses || {}).map(([status, r]) => {
        const content = r.content && Object.values(r.content)[0];
        return element("li", {}, [element("code", {}, [status]), " " + (r.description || "") + (content ? " → " + schemaName(content.schema) : "")]);
      });
      section.append(element("ul", {}, responses));
      main.append(section);
    }
  }
  main.append(element("h2", {}, ["Schemas"]));
  for (const [name, schema] of Object.entries((doc.components && doc.components.schemas) || {})) {
    main.append(element("section", { class: "op", id: "schema-" + name }, [
      element("h3", {}, [name]), element("pre", {}, [JSON.stringify(schema, null, 2)])]));
  }
}

fetch("/api/v1/openapi.json")
  .then((r) => r.json())
  .then(render)
  .catch((e) => { document.getElementById("operations").textContent = "Cannot load the document: " + e; });
