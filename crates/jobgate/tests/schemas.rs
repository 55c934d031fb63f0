//! The contract in `proto-schemas/`: every golden example is valid and every
//! invalid one is rejected by its schema, and the Rust wire types agree with
//! the schemas on both.

use std::path::{Path, PathBuf};

use jobgate_proto::ws::ClientMessage;
use jobgate_proto::{ErrorCode, EventHeader, JobList, JobSnapshot, SubmitRequest};
use jobgate_testkit::{Schemas, repo_root};
use serde_json::Value;

/// `(schema name, file, document)` for every example under `folder`.
fn examples(folder: &Path) -> Vec<(String, PathBuf, Value)> {
    let mut found = Vec::new();
    for schema_dir in std::fs::read_dir(folder).expect("examples folder") {
        let schema_dir = schema_dir.expect("entry").path();
        let name = schema_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_owned();
        if !schema_dir.is_dir() || name == "invalid" {
            continue;
        }
        for file in std::fs::read_dir(&schema_dir).expect("schema examples") {
            let file = file.expect("entry").path();
            let text = std::fs::read_to_string(&file).expect("read example");
            let document =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            found.push((name.clone(), file, document));
        }
    }
    found
}

#[test]
fn golden_examples_are_valid_and_invalid_ones_are_rejected() {
    let schemas = Schemas::load();
    let root = repo_root().join("proto-schemas/examples");
    let valid = examples(&root);
    assert!(valid.len() >= 40, "only {} golden examples", valid.len());
    for (schema, file, document) in &valid {
        if let Err(message) = schemas.check(schema, document) {
            panic!("{}: {message}", file.display());
        }
    }
    let invalid = examples(&root.join("invalid"));
    assert!(
        invalid.len() >= 30,
        "only {} invalid examples",
        invalid.len()
    );
    for (schema, file, document) in &invalid {
        assert!(
            schemas.check(schema, document).is_err(),
            "{} was accepted",
            file.display()
        );
    }
    // Every schema but the shared definitions has examples.
    for name in schemas.names().filter(|n| *n != "common") {
        assert!(
            valid.iter().any(|(s, ..)| s == name),
            "no golden example for {name}"
        );
    }
}

#[test]
fn the_rust_wire_types_agree_with_the_examples() {
    let root = repo_root().join("proto-schemas/examples");
    for (schema, file, document) in examples(&root) {
        let text = document.to_string();
        let what = file.display();
        match schema.as_str() {
            "ws_client_message" => {
                ClientMessage::parse(&text).unwrap_or_else(|e| panic!("{what}: {e:?}"));
            }
            "submit_request" => {
                let request: SubmitRequest =
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
                request.validate().unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            "job_snapshot" => {
                serde_json::from_str::<JobSnapshot>(&text)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            "job_list" => {
                serde_json::from_str::<JobList>(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            "event" => {
                EventHeader::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            _ => {}
        }
    }
    for (schema, file, document) in examples(&root.join("invalid")) {
        let text = document.to_string();
        match schema.as_str() {
            "ws_client_message" => {
                assert!(
                    ClientMessage::parse(&text).is_err(),
                    "{} parsed",
                    file.display()
                );
            }
            "submit_request" => {
                let parsed =
                    serde_json::from_str::<SubmitRequest>(&text).map_err(|e| e.to_string());
                assert!(
                    parsed
                        .and_then(|r| r.validate().map_err(|e| e.to_string()))
                        .is_err(),
                    "{} accepted",
                    file.display()
                );
            }
            _ => {}
        }
    }
}

#[test]
fn every_error_code_is_in_the_schema() {
    let text = std::fs::read_to_string(repo_root().join("proto-schemas/schemas/error_body.json"))
        .expect("schema");
    let schema: Value = serde_json::from_str(&text).expect("json");
    let listed = schema
        .pointer("/$defs/code/enum")
        .or_else(|| schema.pointer("/properties/code/enum"));
    let listed: Vec<&str> = listed
        .and_then(Value::as_array)
        .expect("an enum of codes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for code in ErrorCode::ALL {
        assert!(
            listed.contains(&code.as_str()),
            "{} is missing from error_body.json",
            code.as_str()
        );
    }
}
