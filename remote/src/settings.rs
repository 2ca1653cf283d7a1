//! `[store]` in an experiment's TOML: where the shared remote cache is, what it
//! shares, and how long it may take. Not part of any key.
use serde::{Deserialize, Serialize};

/// The `[store]` table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteSettings {
    /// `s3://bucket/prefix`; unset: no remote (`--remote` and `DML_REMOTE` override it).
    pub remote: Option<String>,
    /// Stages whose artifacts are never sent to or taken from the remote. The
    /// decode cache by default: it is the largest artifact (every image at
    /// `image.resize`², 23 GB for SOP at 256) and among the cheapest to rebuild.
    pub remote_skip: Vec<String>,
    /// Seconds a lookup (connect + HEAD of a manifest) may take before the
    /// remote is given up for the rest of the run.
    pub remote_timeout: f64,
    /// Seconds one transfer request (one part, one range of a file) may take,
    /// retries included; a request that times out gives the remote up for the
    /// rest of the run.
    pub remote_transfer_timeout: f64,
    /// Seconds the end of a run waits, after its last stage, for the uploads
    /// still running in the background; what is not uploaded by then is named
    /// (`dml push` uploads it later).
    pub remote_upload_wait: f64,
    /// Upload what this machine builds; `false` for a read-only member of the team.
    pub remote_upload: bool,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        RemoteSettings {
            remote: None,
            remote_skip: vec!["decode".into()],
            remote_timeout: 3.0,
            remote_transfer_timeout: 120.0,
            remote_upload_wait: 300.0,
            remote_upload: true,
        }
    }
}

impl RemoteSettings {
    /// Checks the values a person may get wrong, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("store.remote_timeout", self.remote_timeout),
            (
                "store.remote_transfer_timeout",
                self.remote_transfer_timeout,
            ),
            ("store.remote_upload_wait", self.remote_upload_wait),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                return Err(format!(
                    "{name} = {v}: expected a number of seconds above 0 (e.g. 3)"
                ));
            }
        }
        Ok(())
    }
}

/// `s3://bucket/prefix` split into its bucket and its prefix (no leading or
/// trailing `/`, possibly empty).
pub fn parse_s3_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| {
        format!("remote `{url}`: expected an S3 URL like s3://bucket/prefix (the endpoint comes from AWS_ENDPOINT_URL)")
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!(
            "remote `{url}`: no bucket name; expected s3://bucket/prefix"
        ));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|p| p == "." || p == "..") {
        return Err(format!(
            "remote `{url}`: `.` and `..` are not allowed in the prefix"
        ));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_bucket_and_prefix() {
        assert_eq!(
            parse_s3_url("s3://team/dml/cache/").unwrap(),
            ("team".to_string(), "dml/cache".to_string())
        );
        assert_eq!(
            parse_s3_url("s3://team").unwrap(),
            ("team".to_string(), String::new())
        );
        assert!(parse_s3_url("https://x/y").unwrap_err().contains("s3://"));
        assert!(parse_s3_url("s3:///p").unwrap_err().contains("bucket"));
        assert!(parse_s3_url("s3://b/../p").is_err());
    }

    #[test]
    fn defaults_skip_decode_and_bad_timeouts_are_named() {
        let s: RemoteSettings = toml_like(r#"{"remote": "s3://b/p"}"#);
        assert_eq!(s.remote_skip, vec!["decode".to_string()]);
        assert!(s.validate().is_ok());
        let bad = RemoteSettings {
            remote_timeout: 0.0,
            ..RemoteSettings::default()
        };
        assert!(bad.validate().unwrap_err().contains("store.remote_timeout"));
        let bad = RemoteSettings {
            remote_upload_wait: f64::NAN,
            ..RemoteSettings::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .contains("store.remote_upload_wait"));
        assert!(serde_json::from_str::<RemoteSettings>(r#"{"remote_skp": []}"#).is_err());
    }

    fn toml_like(json: &str) -> RemoteSettings {
        serde_json::from_str(json).unwrap()
    }
}
