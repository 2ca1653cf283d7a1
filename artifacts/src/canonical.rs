//! Canonical JSON: the one text form that keys and manifest digests are hashed from.
use serde_json::Value;

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
