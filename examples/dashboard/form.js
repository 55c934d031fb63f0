// A submit form from a kind's params_schema (JSON Schema), without the DOM:
// describeForm(schema) says which fields to draw, readParams(form, values)
// turns what was typed into the job's params or names the field that is
// wrong. The page (app.js) draws the fields; tests/browser/form.test.mjs
// tests this file in Node.
//
// Drawn as fields: an object schema whose properties are numbers, integers,
// strings, booleans or enums (with default, minimum/maximum, exclusive
// bounds, string lengths, required). A property of any other shape is one
// JSON text field; a schema that is not an object of properties (or no
// schema at all) is one JSON textarea for the whole params.

const SCALAR_TYPES = new Set(["number", "integer", "string", "boolean"]);

/// "max_attempts" -> "Max attempts"
export function humanize(name) {
  const words = name.replace(/([a-z0-9])([A-Z])/g, "$1 $2").replace(/[_-]+/g, " ").trim().toLowerCase();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

/// The property's one type ("number"), with `nullable` when it also allows null.
function typeOf(property) {
  const types = Array.isArray(property.type) ? property.type : property.type === undefined ? [] : [property.type];
  const nonNull = types.filter((t) => t !== "null");
  return { type: nonNull.length === 1 ? nonNull[0] : undefined, nullable: types.includes("null") };
}

function fieldOf(name, property, required) {
  const { type, nullable } = typeOf(property);
  const field = {
    name,
    label: typeof property.title === "string" ? property.title : humanize(name),
    description: typeof property.description === "string" ? property.description : null,
    required: required && !nullable,
    default: property.default,
  };
  if (Array.isArray(property.enum) && property.enum.length > 0) {
    return { ...field, type: "enum", options: property.enum };
  }
  if (property.const !== undefined) return { ...field, type: "enum", options: [property.const] };
  if (!SCALAR_TYPES.has(type)) return { ...field, type: "json" };
  const bounds = {};
  for (const key of ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "multipleOf"]) {
    if (typeof property[key] === "number") bounds[key] = property[key];
  }
  if (typeof property.pattern === "string") bounds.pattern = property.pattern;
  return { ...field, type, ...bounds };
}

/// `{mode: "fields", fields}` for a schema the page can draw field by field,
/// else `{mode: "raw"}` (one JSON textarea).
export function describeForm(schema) {
  if (!schema || typeof schema !== "object" || schema.type !== "object" ||
      !schema.properties || typeof schema.properties !== "object" || Object.keys(schema.properties).length === 0) {
    return { mode: "raw" };
  }
  const required = new Set(Array.isArray(schema.required) ? schema.required : []);
  const fields = Object.entries(schema.properties)
    .filter(([, property]) => property && typeof property === "object")
    .map(([name, property]) => fieldOf(name, property, required.has(name)));
  // Required fields first, each group in the schema's order (a schema that
  // went through a JSON parser that sorts keys arrives sorted by name).
  fields.sort((a, b) => Number(b.required) - Number(a.required));
  return { mode: "fields", fields };
}

/// The text an input starts with for a field ("" when it has no default).
export function initialText(field) {
  if (field.default === undefined) return "";
  if (field.type === "json") return JSON.stringify(field.default);
  if (field.type === "enum") return String(field.options.findIndex((o) => o === field.default));
  return String(field.default);
}

function checkNumber(field, value) {
  if (field.type === "integer" && !Number.isInteger(value)) return "must be a whole number";
  if (field.minimum !== undefined && value < field.minimum) return "must be at least " + field.minimum;
  if (field.maximum !== undefined && value > field.maximum) return "must be at most " + field.maximum;
  if (field.exclusiveMinimum !== undefined && value <= field.exclusiveMinimum) return "must be more than " + field.exclusiveMinimum;
  if (field.exclusiveMaximum !== undefined && value >= field.exclusiveMaximum) return "must be less than " + field.exclusiveMaximum;
  if (field.multipleOf !== undefined && Math.abs(value / field.multipleOf - Math.round(value / field.multipleOf)) > 1e-9) {
    return "must be a multiple of " + field.multipleOf;
  }
  return null;
}

function checkString(field, value) {
  if (field.minLength !== undefined && value.length < field.minLength) return "must be at least " + field.minLength + " characters";
  if (field.maxLength !== undefined && value.length > field.maxLength) return "must be at most " + field.maxLength + " characters";
  if (field.pattern !== undefined) {
    let re = null;
    try { re = new RegExp(field.pattern, "u"); } catch (_) { /* a pattern JS cannot read: the gateway checks it */ }
    if (re && !re.test(value)) return "must match " + field.pattern;
  }
  return null;
}

/// One field's value from its input: `{value}`, `{omit: true}` or `{error}`.
function readField(field, raw) {
  if (field.type === "boolean") return { value: raw === true };
  const text = typeof raw === "string" ? raw : "";
  if (field.type === "enum") {
    if (text === "") return field.required ? { error: "is required" } : { omit: true };
    const index = Number(text);
    return Number.isInteger(index) && index >= 0 && index < field.options.length
      ? { value: field.options[index] } : { error: "is not one of the choices" };
  }
  if (field.type !== "string" && text.trim() === "") {
    return field.required ? { error: "is required" } : { omit: true };
  }
  if (field.type === "string") {
    if (text === "" && !field.required) return { omit: true };
    const error = checkString(field, text);
    return error ? { error } : { value: text };
  }
  if (field.type === "json") {
    try { return { value: JSON.parse(text) }; } catch (_) { return { error: "is not valid JSON" }; }
  }
  const value = Number(text.trim());
  if (!Number.isFinite(value)) return { error: "must be a number" };
  const error = checkNumber(field, value);
  return error ? { error } : { value };
}

/// The params from the inputs' values (name -> text, or a boolean for a
/// checkbox; for a raw form, `values.params` is the JSON text): `{params}`,
/// or `{error: {field, message}}` naming the first wrong field.
export function readParams(form, values) {
  if (form.mode === "raw") {
    let params;
    try { params = JSON.parse(values.params === undefined || values.params.trim() === "" ? "{}" : values.params); } catch (err) {
      return { error: { field: "params", message: "Params are not valid JSON: " + err.message } };
    }
    if (!params || typeof params !== "object" || Array.isArray(params)) {
      return { error: { field: "params", message: "Params must be a JSON object." } };
    }
    return { params };
  }
  const params = {};
  for (const field of form.fields) {
    const read = readField(field, values[field.name]);
    if (read.error) return { error: { field: field.name, message: field.label + " " + read.error + "." } };
    if (!read.omit) params[field.name] = read.value;
  }
  return { params };
}

/// The field a JSON Pointer into params names ("/strike" -> "strike"), or null.
export function fieldOfPointer(pointer) {
  if (typeof pointer !== "string" || !pointer.startsWith("/")) return null;
  const first = pointer.slice(1).split("/")[0];
  return first.replace(/~1/g, "/").replace(/~0/g, "~") || null;
}
