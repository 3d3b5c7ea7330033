//! The JSON the console reads from a gateway's admin API
//! (`docs/stats-api.md`): the gateway's own types from [`fanout_proto::api`]
//! (one definition for both sides, so a renamed field fails to compile
//! here), plus what only the console does with them (masking, parsing).
//!
//! Reading is lenient: every field has a default and unknown fields are
//! ignored, so a gateway one version ahead or behind still renders. What
//! cannot be parsed at all becomes an error line in the console, never a
//! panic ([`parse`]).

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Parses a JSON body, naming what it was in the error.
pub fn parse<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("unreadable {what}: {e}"))
}

pub use fanout_proto::api::{
    Cluster, Counters, Deployment, EffectiveExport, Feed, Ingest, LastError, Latency, Link,
    MetricsExport, RecentError, Registry, Snapshot, Stopped, Target, Workspace,
};

pub use fanout_proto::api::{target_label, target_name};

/// `GET /api/v1/targets`.
pub type TargetList = fanout_proto::api::Items<Target>;

/// `{"items": [...]}` of effective exports.
pub type EffectiveList = fanout_proto::api::Items<EffectiveExport>;

/// Field names whose values are secrets: the console masks them whatever the
/// gateway sent.
pub const SECRET_FIELDS: &[&str] = &[
    "ingestToken",
    "basicToken",
    "password",
    "sigv4SecretKey",
    "token",
    "secret",
];

/// Flattens an export's fields into `name = value` lines, secrets masked,
/// objects one level deep (`headers.X-Scope-OrgID = team-a`).
pub fn field_lines(fields: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Value::Object(map) = fields else {
        return out;
    };
    for (k, v) in map {
        match v {
            Value::Object(inner) => {
                for (ik, iv) in inner {
                    out.push((format!("{k}.{ik}"), masked_value(ik, iv)));
                }
            }
            _ => out.push((k.clone(), masked_value(k, v))),
        }
    }
    out
}

fn masked_value(key: &str, v: &Value) -> String {
    let lower = key.to_ascii_lowercase();
    let secret = SECRET_FIELDS
        .iter()
        .any(|s| lower == s.to_ascii_lowercase())
        || lower.contains("secret")
        || lower.contains("password")
        || lower.contains("token")
        || lower == "authorization";
    if secret && !v.is_null() {
        return "***".into();
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_of_the_contract_parses() {
        let doc = r#"{"time":"2026-11-25T13:00:00.123Z","uptimeSeconds":12.5,"gateway":"h:9556",
          "configVersion":7,"ready":true,"draining":false,
          "ingest":{"requests":{"http1":{"204":10,"400":1},"h2":{},"h3":{}},"samples":123456,
                    "series":1234,"bytes":999999,"inFlightBytes":0,"memoryBudgetBytes":536870912},
          "drops":{"unattributed":0,"filtered":3},"out":{"samples":123000,"bytes":800000},
          "targets":[{"id":"t-1","endpoint":"https://p/api/v1/write","state":"healthy","paused":false,
             "queueBytes":0,"failures":{"503":2,"timeout":1},"lastError":null,
             "latencyMs":{"p50":3.1,"p90":5.0,"p99":9.7,"max":12.0},
             "feeds":[{"exportId":"prom-dev","deploymentId":"dep-1","clusterId":"c"}],"extra":1}],
          "recentErrors":[{"time":"2026-11-25T12:59:59Z","targetId":"t-1","status":503,"message":"down"}]}"#;
        let s: Snapshot = parse("stats", doc.as_bytes()).unwrap();
        assert_eq!(s.ingest.responses(), (11, 1));
        assert_eq!(s.targets[0].failures_total(), 3);
        assert!(s.targets[0].last_error.is_none());
        assert_eq!(s.recent_errors[0].status, Some(503));
    }

    #[test]
    fn bad_data_is_an_error_not_a_panic() {
        let e = parse::<Snapshot>("stats", b"{\"targets\": 3}").unwrap_err();
        assert!(e.starts_with("unreadable stats"), "{e}");
        assert!(parse::<Snapshot>("stats", b"\xff").is_err());
    }

    #[test]
    fn secrets_are_masked_whatever_the_gateway_sends() {
        let v: Value = serde_json::json!({"endpoint": "http://x", "password": "hunter2",
            "basicToken": "abc", "headers": {"X-Api-Token": "zzz", "X-Scope-OrgID": "a"}});
        let lines = field_lines(&v);
        let text = format!("{lines:?}");
        assert!(!text.contains("hunter2") && !text.contains("abc") && !text.contains("zzz"));
        assert!(text.contains("team") || text.contains("\"a\""));
    }
}
