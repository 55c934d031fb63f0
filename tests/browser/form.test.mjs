// The submit form's schema reading (examples/dashboard/form.js), in Node:
// `node --test tests/browser/*.test.mjs` (scripts/test-dashboard.sh runs it).
import assert from "node:assert/strict";
import { test } from "node:test";
import { describeForm, fieldOfPointer, humanize, initialText, readParams } from "../../examples/dashboard/form.js";

const PRICING = {
  type: "object",
  properties: {
    spot: { type: "number", exclusiveMinimum: 0, default: 100 },
    option: { enum: ["call", "put"], default: "call" },
    paths: { type: "integer", minimum: 1, maximum: 1000000, default: 200000 },
    seed: { type: "integer", minimum: 0 },
    label: { type: "string", maxLength: 5, title: "Tag" },
    antithetic: { type: "boolean", default: true },
    weights: { type: "array", items: { type: "number" } },
    note: { type: ["string", "null"] },
  },
  required: ["spot", "paths", "note"],
};

test("every property becomes a field of its type, with its bounds and default; required ones first", () => {
  const form = describeForm(PRICING);
  assert.equal(form.mode, "fields");
  const byName = Object.fromEntries(form.fields.map((f) => [f.name, f]));
  assert.deepEqual(
    form.fields.map((f) => [f.name, f.type, f.required]),
    [["spot", "number", true], ["paths", "integer", true], ["option", "enum", false], ["seed", "integer", false],
      ["label", "string", false], ["antithetic", "boolean", false], ["weights", "json", false], ["note", "string", false]],
  );
  assert.equal(byName.spot.exclusiveMinimum, 0);
  assert.equal(byName.paths.maximum, 1000000);
  assert.equal(byName.label.label, "Tag");
  assert.equal(byName.spot.label, "Spot");
  assert.equal(initialText(byName.option), "0");
  assert.equal(initialText(byName.paths), "200000");
  assert.equal(initialText(byName.seed), "");
});

test("a schema that is not an object of properties is one JSON textarea", () => {
  for (const schema of [null, undefined, {}, { type: "object" }, { type: "array" }, { type: "object", properties: {} }]) {
    assert.deepEqual(describeForm(schema), { mode: "raw" });
  }
});

test("what was typed becomes typed params; empty optional fields are left out", () => {
  const form = describeForm(PRICING);
  const read = readParams(form, {
    spot: "101.5", option: "1", paths: "5000", seed: "", label: "", antithetic: false, weights: "[1, 2]", note: "",
  });
  assert.deepEqual(read, { params: { spot: 101.5, option: "put", paths: 5000, antithetic: false, weights: [1, 2] } });
});

test("the first wrong field is named", () => {
  const form = describeForm(PRICING);
  const base = { spot: "100", option: "0", paths: "10", antithetic: true, weights: "[]" };
  const error = (values) => readParams(form, { ...base, ...values }).error;
  assert.deepEqual(error({ spot: "" }), { field: "spot", message: "Spot is required." });
  assert.deepEqual(error({ spot: "0" }), { field: "spot", message: "Spot must be more than 0." });
  assert.deepEqual(error({ spot: "abc" }), { field: "spot", message: "Spot must be a number." });
  assert.deepEqual(error({ paths: "1.5" }), { field: "paths", message: "Paths must be a whole number." });
  assert.deepEqual(error({ paths: "2000000" }), { field: "paths", message: "Paths must be at most 1000000." });
  assert.deepEqual(error({ label: "toolong" }), { field: "label", message: "Tag must be at most 5 characters." });
  assert.deepEqual(error({ weights: "[1," }), { field: "weights", message: "Weights is not valid JSON." });
  assert.equal(error({}), undefined);
});

test("a raw form takes a JSON object", () => {
  const raw = { mode: "raw" };
  assert.deepEqual(readParams(raw, { params: ' {"a": 1} ' }), { params: { a: 1 } });
  assert.deepEqual(readParams(raw, { params: "" }), { params: {} });
  assert.equal(readParams(raw, { params: "[1]" }).error.field, "params");
  assert.equal(readParams(raw, { params: "{" }).error.field, "params");
});

test("names and pointers", () => {
  assert.equal(humanize("max_attempts"), "Max attempts");
  assert.equal(humanize("riskFreeRate"), "Risk free rate");
  assert.equal(fieldOfPointer("/strike"), "strike");
  assert.equal(fieldOfPointer("/legs/0/strike"), "legs");
  assert.equal(fieldOfPointer("/a~1b"), "a/b");
  assert.equal(fieldOfPointer(""), null);
  assert.equal(fieldOfPointer(undefined), null);
});
