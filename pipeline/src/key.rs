//! Stage keys: blake3 over a canonical encoding of typed settings and input keys.
use serde_json::Value;
use std::collections::BTreeMap;

/// Bumped to invalidate every artifact at once (a change of the canonical form).
pub const SCHEMA_SALT: &str = "dml-key-v1";

pub use dml_artifacts::canonical_json;

/// The key of one stage: 32 hex digits of blake3.
pub fn stage_key(
    stage: &str,
    version: u32,
    settings: &Value,
    inputs: &BTreeMap<String, String>,
    fingerprint: Option<&str>,
) -> String {
    let doc = serde_json::json!({
        "salt": SCHEMA_SALT,
        "stage": stage,
        "version": version,
        "settings": settings,
        "inputs": inputs,
        "fingerprint": fingerprint,
    });
    let hash = blake3::hash(canonical_json(&doc).as_bytes());
    hash.to_hex()[..32].to_string()
}

/// The key a manifest's own settings, inputs, version and fingerprint give.
pub fn manifest_key(m: &dml_artifacts::Manifest) -> String {
    stage_key(
        &m.stage,
        m.version,
        &m.settings,
        &m.inputs,
        m.fingerprint.as_deref(),
    )
}

/// Looks a key up; a manifest without its own digest (written by an older dml)
/// must give back its key from its settings and inputs.
pub(crate) fn lookup(
    store: &dml_artifacts::ArtifactStore,
    stage: &str,
    key: &str,
    verify: bool,
) -> Result<dml_artifacts::Lookup, dml_artifacts::StoreError> {
    store.lookup_with(stage, key, verify, &manifest_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_sorts_keys_and_ignores_insertion_order() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[1,2],"x":0.5}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":0.5,"y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_json(&a), r#"{"a":{"x":0.5,"y":[1,2]},"b":1}"#);
    }

    #[test]
    fn floats_are_hashed_by_value() {
        let a: Value = serde_json::from_str(r#"{"lr":1e-4}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"lr":0.0001}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        let k = |v: &Value| stage_key("train", 1, v, &BTreeMap::new(), None);
        assert_eq!(k(&a), k(&b));
        assert_ne!(k(&a), k(&json!({"lr": 0.0002})));
    }

    #[test]
    fn every_part_of_the_key_matters() {
        let s = json!({"p": 1});
        let mut inputs = BTreeMap::new();
        inputs.insert("index".to_string(), "abc".to_string());
        let base = stage_key("plan", 1, &s, &inputs, None);
        assert_ne!(base, stage_key("plan", 2, &s, &inputs, None));
        assert_ne!(base, stage_key("other", 1, &s, &inputs, None));
        assert_ne!(base, stage_key("plan", 1, &json!({"p": 2}), &inputs, None));
        assert_ne!(base, stage_key("plan", 1, &s, &inputs, Some("fp")));
        inputs.insert("index".to_string(), "abd".to_string());
        assert_ne!(base, stage_key("plan", 1, &s, &inputs, None));
    }

    #[test]
    fn golden_key() {
        // A change here means every existing store is invalidated: bump SCHEMA_SALT
        // on purpose, never by accident.
        let mut inputs = BTreeMap::new();
        inputs.insert(
            "index".to_string(),
            "0123456789abcdef0123456789abcdef".to_string(),
        );
        let key = stage_key(
            "plan",
            1,
            &json!({"plan": {"p": 20, "k": 6, "lr": 0.0003}}),
            &inputs,
            None,
        );
        assert_eq!(key, GOLDEN);
    }
    // Computed independently: Python `blake3(json.dumps(doc, sort_keys=True, separators=(",", ":")))`.
    const GOLDEN: &str = "3d56be94f7ae67f2f460b45c13ffb381";
}
