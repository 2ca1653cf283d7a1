//! Stage keys: blake3 over a canonical encoding of typed settings and input keys.
use serde_json::Value;
use std::collections::BTreeMap;

/// Bumped to invalidate every artifact at once (a change of the canonical form).
pub const SCHEMA_SALT: &str = "dml-key-v1";

/// Canonical JSON: object keys sorted at every level, no whitespace, numbers as
/// serde_json prints them (integers exactly, floats in shortest round-trip form).
/// Independent of whether serde_json preserves insertion order.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Number(n) => {
            // Floats that hold an integral value print as `1.0`, integers as `1`:
            // the typed settings decide which, so `lr = 1` and `lr = 1.0` agree.
            out.push_str(&n.to_string());
        }
        other => out.push_str(&other.to_string()),
    }
}

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
