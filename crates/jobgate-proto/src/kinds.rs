//! Kinds that describe themselves: a worker may register a JSON Schema
//! (draft 2020-12) for a kind's params, which the gateway checks each
//! submission against before anything is written, and `GET /v1/kinds`
//! serves to clients that build forms from it.

use std::fmt::Write as _;

use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// `GET /v1/kinds`: the registered kinds, sorted by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KindList {
    pub kinds: Vec<KindInfo>,
}

/// One registered kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KindInfo {
    pub kind: String,
    pub queue: String,
    /// The JSON Schema its worker registered for its params, verbatim: the
    /// order of its properties is the order a form shows them in (a
    /// `Value` would sort them). `null` for none (the params are then not
    /// checked by the gateway).
    pub params_schema: Option<Box<RawValue>>,
}

/// A kind's params schema, compiled once.
#[derive(Debug)]
pub struct ParamsSchema {
    schema: Value,
    validator: jsonschema::Validator,
}

/// Params that break their kind's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamsError {
    /// Names the field, then what is wrong with it:
    /// `params.strike: -1 is less than the minimum of 0`.
    pub message: String,
    /// The field as a JSON Pointer into the params (`/strike`); `""` for
    /// the params as a whole.
    pub field: String,
}

impl ParamsSchema {
    /// Compiles `schema` as draft 2020-12. References are resolved only
    /// inside the schema: nothing is fetched from files or the network.
    pub fn compile(schema: Value) -> Result<Self, String> {
        let validator = jsonschema::draft202012::options()
            .offline()
            .build(&schema)
            .map_err(|e| e.to_string())?;
        Ok(Self { schema, validator })
    }

    /// The schema as the worker registered it.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Checks `params`, naming the first field that breaks the schema.
    pub fn validate(&self, params: &Value) -> Result<(), ParamsError> {
        let Err(error) = self.validator.validate(params) else {
            return Ok(());
        };
        let mut segments: Vec<LocationSegment<'_>> = error.instance_path().iter().collect();
        // The field that is missing or not allowed, rather than the object
        // that lacks or holds it.
        let child = match error.kind() {
            ValidationErrorKind::Required { property } => property.as_str().map(str::to_owned),
            ValidationErrorKind::AdditionalProperties { unexpected }
            | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
                unexpected.first().cloned()
            }
            _ => None,
        };
        if let Some(child) = &child {
            segments.push(LocationSegment::Property(child.as_str().into()));
        }
        let mut field = String::new();
        let mut path = String::from("params");
        for segment in &segments {
            match segment {
                LocationSegment::Property(name) => {
                    field.push('/');
                    field.push_str(&name.replace('~', "~0").replace('/', "~1"));
                    path.push('.');
                    path.push_str(name);
                }
                LocationSegment::Index(index) => {
                    let _ = write!(field, "/{index}");
                    let _ = write!(path, "[{index}]");
                }
            }
        }
        Err(ParamsError {
            message: format!("{path}: {error}"),
            field,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pricing() -> ParamsSchema {
        ParamsSchema::compile(json!({
            "type": "object",
            "properties": {
                "strike": {"type": "number", "minimum": 0},
                "legs": {"type": "array", "items": {
                    "type": "object",
                    "properties": {"qty": {"type": "integer"}},
                }},
                "a/b": {"type": "string"},
            },
            "required": ["strike"],
            "additionalProperties": false,
        }))
        .expect("a valid schema")
    }

    fn error(params: Value) -> ParamsError {
        pricing().validate(&params).expect_err("invalid params")
    }

    #[test]
    fn names_the_field_that_breaks_the_schema() {
        assert_eq!(pricing().validate(&json!({"strike": 1})), Ok(()));
        assert_eq!(
            error(json!({"strike": -1})),
            ParamsError {
                message: "params.strike: -1 is less than the minimum of 0".into(),
                field: "/strike".into(),
            }
        );
        let nested = error(json!({"strike": 1, "legs": [{"qty": 1}, {"qty": "x"}]}));
        assert_eq!(nested.field, "/legs/1/qty");
        assert!(
            nested.message.starts_with("params.legs[1].qty: "),
            "{nested:?}"
        );
        assert_eq!(error(json!({"strike": 1, "a/b": 3})).field, "/a~1b");
    }

    #[test]
    fn a_missing_or_unexpected_field_is_named_itself() {
        let missing = error(json!({}));
        assert_eq!(missing.field, "/strike");
        assert!(
            missing.message.starts_with("params.strike: "),
            "{missing:?}"
        );
        let unexpected = error(json!({"strike": 1, "spot": 2}));
        assert_eq!(unexpected.field, "/spot");
        let whole = error(json!([1]));
        assert_eq!(whole.field, "");
        assert!(whole.message.starts_with("params: "), "{whole:?}");
    }

    #[test]
    fn a_broken_schema_does_not_compile_and_nothing_is_fetched() {
        assert!(ParamsSchema::compile(json!({"type": "no-such-type"})).is_err());
        assert!(ParamsSchema::compile(json!({"minimum": "zero"})).is_err());
        assert!(ParamsSchema::compile(json!({"$ref": "https://example.com/schema.json"})).is_err());
    }
}
