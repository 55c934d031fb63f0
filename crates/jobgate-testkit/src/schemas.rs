//! The JSON Schemas of `proto-schemas/schemas`, for validating real messages.

use std::collections::HashMap;

use jsonschema::{Registry, Validator};
use serde_json::Value;

use crate::repo_root;

/// Every schema of the protocol, compiled, by file stem (`event`, …).
pub struct Schemas {
    validators: HashMap<String, Validator>,
}

impl std::fmt::Debug for Schemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schemas")
            .field("names", &self.validators.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Schemas {
    /// Loads and compiles every `*.json` in `proto-schemas/schemas`.
    pub fn load() -> Self {
        let folder = repo_root().join("proto-schemas/schemas");
        let mut documents = Vec::new();
        for entry in std::fs::read_dir(&folder).expect("proto-schemas/schemas exists") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).expect("read schema");
                let document: Value = serde_json::from_str(&text).expect("schema is JSON");
                let stem = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .expect("name")
                    .to_owned();
                documents.push((stem, document));
            }
        }
        let mut registry = Registry::new();
        for (_, document) in &documents {
            let id = document["$id"]
                .as_str()
                .expect("every schema has an $id")
                .to_owned();
            registry = registry
                .add(id, document.clone())
                .expect("schema registers");
        }
        let registry = registry.prepare().expect("schemas resolve");
        let mut validators = HashMap::new();
        for (stem, document) in &documents {
            let validator = jsonschema::options()
                .offline()
                .with_registry(&registry)
                .build(document)
                .unwrap_or_else(|e| panic!("schema {stem} does not compile: {e}"));
            validators.insert(stem.clone(), validator);
        }
        Self { validators }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.validators.keys().map(String::as_str)
    }

    /// Checks `instance` against schema `name`, with every error in the message.
    pub fn check(&self, name: &str, instance: &Value) -> Result<(), String> {
        let validator = self
            .validators
            .get(name)
            .unwrap_or_else(|| panic!("no schema named {name}"));
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{name}: {instance} is invalid: {}",
                errors.join("; ")
            ))
        }
    }

    /// Panics unless `instance` is valid against schema `name`.
    pub fn assert_valid(&self, name: &str, instance: &Value) {
        if let Err(message) = self.check(name, instance) {
            panic!("{message}");
        }
    }
}
