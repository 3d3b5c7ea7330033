//! The OpenAPI 3.0 document of the admin API, written by hand from the routes
//! in [`super::api`] and [`crate::deliver::api`].
//!
//! The response shapes are the types of [`fanout_proto::api`], which the
//! gateway serializes and the console reads. The tests below check the
//! document against them both ways: every field a fully populated value of
//! each type serializes is in its schema and every property of the schema
//! is in the value, with the right JSON type; the registry as the gateway
//! serves it, and the console's read view of it, only use properties the
//! schemas name. A field renamed on either side fails them.

use serde_json::{json, Value};

/// The document served at `GET /api/v1/openapi.json`.
pub fn document() -> Value {
    let error = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let errors = json!({"400": error, "401": error, "404": error, "409": error});
    let mut paths = serde_json::Map::new();
    let schema_of = |name: &str| json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{name}")}}});
    // `?limit=&after=&q=` of every list (admin/paging.rs).
    let paging = json!([
        {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0},
            "description": "at most this many items (without it: all); the answer's `next` is the `after` of the next page"},
        {"name": "after", "in": "query", "required": false, "schema": {"type": "string"},
            "description": "only items whose id sorts after this one (items are in id order)"},
        {"name": "q", "in": "query", "required": false, "schema": {"type": "string"},
            "description": "only items whose id or fields contain this, case-insensitive"}
    ]);
    let next = json!({"type": "string", "description": "with `limit`: the `after` of the next page; absent on the last"});
    for (plural, schema) in [
        ("clusters", "Cluster"),
        ("workspaces", "Workspace"),
        ("deployments", "Deployment"),
        ("metrics-exports", "MetricsExport"),
    ] {
        let obj = json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
        let ok = json!({"description": "the object, secrets masked", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
        let mut collection = json!({
            "get": {"summary": format!("List {plural}"), "parameters": paging.clone(), "responses": {"200": {"description": "{\"items\": [...], \"next\": ...}", "content": {"application/json": {"schema": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{schema}")}}, "next": next.clone()}}}}}}},
            "post": {"summary": format!("Create one of {plural}"), "requestBody": obj, "responses": {"201": ok}},
        });
        merge(&mut collection["post"]["responses"], &errors);
        paths.insert(format!("/api/v1/{plural}"), collection);
        let id =
            json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
        let mut item = json!({
            "parameters": id,
            "get": {"summary": "Read one", "responses": {"200": ok}},
            "put": {"summary": "Replace one (\"***\" keeps a stored secret)", "requestBody": obj, "responses": {"200": ok}},
            "patch": {"summary": "JSON merge patch (RFC 7396)", "requestBody": {"content": {"application/merge-patch+json": {"schema": {"type": "object"}}}}, "responses": {"200": ok}},
            "delete": {"summary": "Delete one (409 while referenced)", "responses": {"204": {"description": "deleted"}}},
        });
        for m in ["get", "put", "patch", "delete"] {
            merge(&mut item[m]["responses"], &errors);
        }
        paths.insert(format!("/api/v1/{plural}/{{id}}"), item);
    }
    paths.insert(
        "/api/v1/deployments/{id}/metrics-exports".into(),
        json!({"get": {"summary": "Effective exports of a Deployment (overrides merged, secrets masked)",
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "{\"items\": [...], \"limits\": {...}}: the exports, and the state of the Deployment's and its cluster's active-series limits when they have one",
                "content": {"application/json": {"schema": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/EffectiveExport"}},
                    "limits": {"$ref": "#/components/schemas/LimitsStatus"}}}}}}, "404": error}}}),
    );
    paths.insert(
        "/api/v1/metrics-exports/{id}/status".into(),
        json!({"get": {"summary": "The export's status for every Deployment it applies to, on this gateway",
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}, paging[0].clone(), paging[1].clone(), paging[2].clone()],
            "responses": {"200": {"description": "per Deployment (paged by Deployment id)", "content": schema_of("ExportStatuses")}, "404": error}}}),
    );
    paths.insert(
        "/api/v1/registry".into(),
        json!({
            "get": {"summary": "The whole declarative registry (JSON, or YAML with Accept: application/yaml), secrets masked",
                "responses": {"200": {"description": "document", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Registry"}}, "application/yaml": {"schema": {"$ref": "#/components/schemas/Registry"}}}}}},
            "put": {"summary": "Replace the registry atomically (JSON or YAML by Content-Type)",
                "parameters": [{"name": "dryRun", "in": "query", "required": false, "schema": {"type": "boolean", "default": false},
                    "description": "check the document as a write and answer what it would create, change and remove (a Planned), changing nothing"}],
                "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Registry"}}, "application/yaml": {"schema": {"$ref": "#/components/schemas/Registry"}}}},
                "responses": {"200": {"description": "applied: version and counts (with dryRun: a Planned)", "content": {"application/json": {"schema": {"oneOf": [
                    {"$ref": "#/components/schemas/Applied"}, {"$ref": "#/components/schemas/Planned"}]}}}}, "400": error, "401": error}},
        }),
    );
    paths.insert(
        "/api/v1/stats".into(),
        json!({"get": {"summary": "One stats snapshot of this gateway (docs/stats-api.md)",
            "responses": {"200": {"description": "snapshot", "content": schema_of("Snapshot")}, "401": error}}}),
    );
    paths.insert(
        "/api/v1/stats/stream".into(),
        json!({"get": {"summary": "Server-sent events: a `stats` event (a Snapshot) every second; one `stopped` event ({reason}) when the gateway shuts down, then the stream ends",
            "responses": {"200": {"description": "text/event-stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}, "401": error}}}),
    );
    paths.insert(
        "/api/v1/targets".into(),
        json!({"get": {"summary": "Every delivery target's status",
            "parameters": paging.clone(),
            "responses": {"200": {"description": "{\"items\": [...], \"next\": ...} (q matches the id, endpoint and exports)", "content": {"application/json": {"schema": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Target"}}, "next": next.clone()}}}}}, "401": error}}}),
    );
    for action in ["pause", "resume"] {
        paths.insert(
            format!("/api/v1/targets/{{id}}/{action}"),
            json!({"post": {"summary": format!("{action} a target's sending (its queue keeps filling while paused)"),
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the target's status", "content": schema_of("Target")}, "401": error, "404": error}}}),
        );
    }
    paths.insert("/metrics".into(), json!({"get": {"summary": "Prometheus text exposition of the gateway's own metrics", "responses": {"200": {"description": "text/plain; version=0.0.4"}}}}));
    paths.insert("/api/v1/openapi.json".into(), json!({"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.0"}}}}));
    paths.insert("/healthz".into(), json!({"get": {"summary": "Process alive", "security": [], "responses": {"200": {"description": "ok"}}}}));
    paths.insert("/readyz".into(), json!({"get": {"summary": "Registry loaded and accepting writes", "security": [], "responses": {"200": {"description": "ready"}, "503": {"description": "not ready or draining"}}}}));

    let s = |t: &str| json!({"type": t});
    let secret = json!({"type": "string", "description": "write-only: reads show \"***\"; writing \"***\" keeps the stored value"});
    let export_fields = json!({"type": "object", "properties": {
        "endpoint": s("string"), "exporterType": {"type": "string", "enum": ["PROMETHEUS"]},
        "authType": {"type": "string", "enum": ["NONE", "AUTH_TOKEN", "BASIC", "SIGV4"]},
        "basicToken": secret, "username": s("string"), "password": secret,
        "sigv4Region": s("string"), "sigv4AccessKey": s("string"), "sigv4SecretKey": secret, "sigv4RoleArn": s("string"),
        "headers": {"type": "object", "additionalProperties": s("string"), "description": "values are secrets (\"***\" in reads) unless named in publicHeaders"},
        "publicHeaders": {"type": "array", "items": s("string"), "description": "header names whose values reads show (never Authorization)"},
        "labels": {"type": "object", "additionalProperties": s("string")},
        "delivery": {"type": "object", "properties": {
            "maxSamplesPerSend": s("integer"), "batchSendDeadline": s("string"), "maxConcurrency": s("integer"), "http2": s("boolean"),
            "timeout": s("string"), "maxBackoff": s("string"), "diskBudget": {"oneOf": [s("integer"), s("string")]},
            "maxBytesPerSend": {"oneOf": [s("integer"), s("string")]}, "sendMetadata": s("boolean"),
            "protocol": {"type": "string", "enum": ["V1", "V2"]}}},
        "unsetFields": {"type": "array", "items": s("string"), "description": "in a link's overrides only; not stored"}}});
    let link = json!({"type": "object", "required": ["scope", "scopeEntityId"], "properties": {
        "scope": {"type": "string", "enum": ["DEPLOYMENT"]}, "scopeEntityId": s("string"),
        "overrides": {"type": "object", "properties": {"metricsExport": {"$ref": "#/components/schemas/ExportFields"},
            "setFields": {"type": "array", "items": s("string"), "readOnly": true}}}}});
    let set_fields = json!({"type": "array", "items": s("string"), "readOnly": true});
    let counts = json!({"type": "object", "additionalProperties": s("integer")});
    let error_schema = json!({"type": "object", "nullable": true, "properties": {
        "time": s("string"), "status": {"type": "integer", "nullable": true}, "message": s("string")}});
    let target = json!({"type": "object", "properties": {
                    "id": s("string"), "endpoint": s("string"), "protocol": s("string"),
                    "state": {"type": "string", "enum": ["idle", "healthy", "retrying", "failing", "paused"]}, "paused": s("boolean"),
                    "queueBytes": s("integer"), "queueSamples": s("integer"), "spillBytes": s("integer"),
                    "spillState": {"type": "string", "enum": ["off", "ok", "broken", "disk_full"]},
                    "oldestQueuedSeconds": s("number"), "samplesSent": s("integer"), "bytesSent": s("integer"),
                    "requestsSent": s("integer"), "retries": s("integer"), "probes": s("integer"), "failures": counts, "dropped": counts,
                    "lastError": error_schema, "concurrency": s("integer"), "inFlight": s("integer"),
                    "latencyMs": {"type": "object", "properties": {"p50": s("number"), "p90": s("number"), "p99": s("number"), "max": s("number")}},
                    "feeds": {"type": "array", "items": {"type": "object", "properties": {
                        "exportId": s("string"), "deploymentId": s("string"), "clusterId": s("string")}}}}});
    let export_status = json!({"type": "object", "properties": {
                    "state": {"type": "string", "enum": ["delivering", "waiting", "retrying", "failing", "paused"]},
                    "lastSuccessAt": s("string"),
                    "lastError": {"type": "object", "properties": {"time": s("string"), "status": {"type": "integer", "nullable": true}, "message": s("string")}},
                    "samplesDelivered1m": s("integer"), "samplesDropped1m": {"type": "object", "additionalProperties": s("integer")},
                    "samplesDelivered": s("integer"), "samplesDropped": {"type": "object", "additionalProperties": s("integer")},
                    "samplesSpilled": s("integer"), "oldestUndeliveredSeconds": s("number"),
                    "gateways": {"type": "array", "items": {"type": "object", "properties": {"gateway": s("string"), "reportedAt": s("string")}}}}});
    let deployment_stat = json!({"type": "object", "properties": {
        "id": s("string"), "clusterId": s("string"), "exports": s("integer"),
        "state": {"type": "string", "enum": ["delivering", "waiting", "retrying", "failing", "paused"]},
        "samplesDelivered1m": s("integer"), "samplesDropped1m": {"type": "object", "additionalProperties": s("integer")},
        "oldestUndeliveredSeconds": s("number"),
        "lastError": {"type": "object", "properties": {"time": s("string"), "status": {"type": "integer", "nullable": true}, "message": s("string")}}}});
    let export_statuses = json!({"type": "object", "properties": {"id": s("string"), "next": next.clone(), "items": {"type": "array", "items": {"type": "object", "properties": {
                    "deploymentId": s("string"), "targetId": s("string"), "status": {"$ref": "#/components/schemas/ExportStatus"}}}}}});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Fanout admin API", "version": env!("CARGO_PKG_VERSION")},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": s("string"), "problems": {"type": "array", "items": s("string")}}},
                "Snapshot": {"type": "object", "properties": {
                    "time": s("string"), "uptimeSeconds": s("number"), "gateway": s("string"), "configVersion": s("integer"),
                    "ready": s("boolean"), "draining": s("boolean"),
                    "ingest": {"type": "object", "properties": {
                        "requests": {"type": "object", "description": "by transport (http1, h2, h3), then status code", "additionalProperties": counts},
                        "samples": s("integer"), "series": s("integer"), "bytes": s("integer"),
                        "inFlightBytes": s("integer"), "memoryBudgetBytes": s("integer")}},
                    "drops": counts,
                    "out": {"type": "object", "properties": {"samples": s("integer"), "bytes": s("integer")}},
                    "orphanBacklogs": {"type": "array", "items": {"type": "object", "properties": {
                        "targetId": s("string"), "diskBytes": s("integer"), "segments": s("integer"),
                        "ageSeconds": s("number"), "deleteInSeconds": s("number")}}},
                    "targets": {"type": "array", "items": {"$ref": "#/components/schemas/Target"}},
                    "recentErrors": {"type": "array", "items": {"type": "object", "properties": {
                        "time": s("string"), "targetId": s("string"), "status": {"type": "integer", "nullable": true}, "message": s("string")}}},
                    "deployments": {"type": "array", "items": {"$ref": "#/components/schemas/DeploymentStat"}}}},
                "DeploymentStat": deployment_stat,
                "Target": target,
                "EffectiveExport": {"type": "object", "properties": {
                    "id": s("string"), "objectKey": s("string"), "sourceScope": {"type": "string", "enum": ["WORKSPACE", "DEPLOYMENT"]},
                    "sourceScopeEntityId": s("string"), "targetId": s("string"),
                    "metricsExport": {"$ref": "#/components/schemas/ExportFields"}, "setFields": set_fields,
                    "status": {"$ref": "#/components/schemas/ExportStatus"}}},
                "ExportStatus": export_status,
                "ExportStatuses": export_statuses,
                "Applied": {"type": "object", "properties": {
                    "version": s("integer"), "clusters": s("integer"), "workspaces": s("integer"),
                    "deployments": s("integer"), "metricsExports": s("integer"), "targets": s("integer")}},
                "Planned": {"type": "object", "properties": {
                    "version": s("integer"),
                    "created": {"type": "array", "items": s("string"), "description": "kind/id"},
                    "changed": {"type": "array", "items": s("string")},
                    "removed": {"type": "array", "items": s("string")},
                    "wouldHold": {"$ref": "#/components/schemas/Applied"}}},
                "Cluster": {"type": "object", "required": ["id", "organizationId", "cloudProvider", "cloudRegion", "ingestToken"], "properties": {
                    "id": s("string"), "organizationId": s("string"), "cloudProvider": s("string"), "cloudRegion": s("string"),
                    "ingestToken": secret, "setFields": set_fields, "limits": {"$ref": "#/components/schemas/Limits"}}},
                "Limits": {"type": "object", "properties": {"samplesPerSecond": s("integer"), "series": s("integer")}},
                "SeriesLimitStatus": {"type": "object", "properties": {"limit": s("integer"), "active": s("integer"), "droppedSamples": s("integer")}},
                "LimitsStatus": {"type": "object", "properties": {
                    "series": {"$ref": "#/components/schemas/SeriesLimitStatus"},
                    "clusterSeries": {"$ref": "#/components/schemas/SeriesLimitStatus"}}},
                "Workspace": {"type": "object", "required": ["id", "organizationId"], "properties": {
                    "id": s("string"), "organizationId": s("string"), "name": s("string")}},
                "Deployment": {"type": "object", "required": ["id", "workspaceId", "clusterId", "namespace", "type"], "properties": {
                    "id": s("string"), "workspaceId": s("string"), "clusterId": s("string"), "namespace": s("string"),
                    "type": {"type": "string", "enum": ["HOSTED", "HYBRID"]}, "name": s("string"),
                    "limits": {"$ref": "#/components/schemas/Limits"}}},
                "ExportFields": export_fields,
                "Link": link,
                "MetricsExport": {"type": "object", "required": ["id", "objectKey", "scope", "scopeEntityId", "metricsExport"], "properties": {
                    "id": s("string"), "objectKey": s("string"), "scope": {"type": "string", "enum": ["WORKSPACE", "DEPLOYMENT"]},
                    "scopeEntityId": s("string"), "description": s("string"), "autoLinkDeployments": s("boolean"),
                    "links": {"type": "array", "items": {"$ref": "#/components/schemas/Link"}},
                    "excludeLinks": {"type": "array", "items": {"type": "object", "properties": {"scope": s("string"), "scopeEntityId": s("string")}}},
                    "metricsExport": {"$ref": "#/components/schemas/ExportFields"}, "setFields": set_fields}},
                "Registry": {"type": "object", "properties": {
                    "clusters": {"type": "array", "items": {"$ref": "#/components/schemas/Cluster"}},
                    "workspaces": {"type": "array", "items": {"$ref": "#/components/schemas/Workspace"}},
                    "deployments": {"type": "array", "items": {"$ref": "#/components/schemas/Deployment"}},
                    "metricsExports": {"type": "array", "items": {"$ref": "#/components/schemas/MetricsExport"}}}},
            }
        }
    })
}

fn merge(target: &mut Value, extra: &Value) {
    if let (Some(t), Some(e)) = (target.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            t.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use fanout_proto::api;
    use serde::Serialize;
    use serde_json::{json, Value};

    use super::document;
    use crate::registry::model::{masked_document, Document, Registry};

    /// Where `value` does not follow `schema` (resolving `$ref`s in `doc`):
    /// a property the schema does not name, a JSON type other than the
    /// schema's, and, when `exhaustive`, a property of the schema that the
    /// value lacks.
    fn drift(
        value: &Value,
        schema: &Value,
        doc: &Value,
        at: &str,
        exhaustive: bool,
    ) -> Vec<String> {
        let mut out = Vec::new();
        // An export's fields are free-form JSON in the shared types: only
        // the names it has are checked.
        let exhaustive = exhaustive && schema["$ref"] != "#/components/schemas/ExportFields";
        let schema = resolve(schema, doc);
        if value.is_null() && schema["nullable"] == true {
            return out;
        }
        let ok = match schema["type"].as_str() {
            Some("object") => value.is_object(),
            Some("array") => value.is_array(),
            Some("string") => value.is_string(),
            Some("integer") => value.is_u64() || value.is_i64(),
            Some("number") => value.is_number(),
            Some("boolean") => value.is_boolean(),
            _ => true,
        };
        if !ok {
            out.push(format!("{at}: {value} is not of type {}", schema["type"]));
            return out;
        }
        if let (Some(props), Some(obj)) = (schema["properties"].as_object(), value.as_object()) {
            for (k, v) in obj {
                match props.get(k) {
                    Some(p) => out.extend(drift(v, p, doc, &format!("{at}.{k}"), exhaustive)),
                    None => out.push(format!("{at}.{k}: not in the schema")),
                }
            }
            if exhaustive {
                for k in props.keys().filter(|k| !obj.contains_key(*k)) {
                    out.push(format!("{at}.{k}: in the schema, not in the value"));
                }
            }
        } else if let (Some(extra), Some(obj)) =
            (schema.get("additionalProperties"), value.as_object())
        {
            for (k, v) in obj {
                out.extend(drift(v, extra, doc, &format!("{at}.{k}"), exhaustive));
            }
        }
        if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
            for (i, v) in arr.iter().enumerate() {
                out.extend(drift(v, items, doc, &format!("{at}[{i}]"), exhaustive));
            }
        }
        out
    }

    fn resolve<'a>(schema: &'a Value, doc: &'a Value) -> &'a Value {
        match schema["$ref"].as_str() {
            Some(r) => {
                let name = r.trim_start_matches("#/components/schemas/");
                &doc["components"]["schemas"][name]
            }
            None => schema,
        }
    }

    fn check<T: Serialize>(name: &str, value: &T, exhaustive: bool) {
        let doc = document();
        let schema = &doc["components"]["schemas"][name];
        assert!(schema.is_object(), "no schema {name}");
        let value = serde_json::to_value(value).unwrap();
        let problems = drift(&value, schema, &doc, name, exhaustive);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    fn target() -> api::Target {
        api::Target {
            id: "t-1".into(),
            endpoint: "http://p/w".into(),
            protocol: "V1 (fallback: 415 Unsupported Media Type)".into(),
            state: "retrying".into(),
            spill_state: "ok".into(),
            failures: BTreeMap::from([("503".into(), 2)]),
            dropped: BTreeMap::from([("rejected".into(), 0)]),
            last_error: Some(api::LastError {
                time: "2026-11-29T00:00:00Z".into(),
                status: Some(503),
                message: "503 Service Unavailable".into(),
            }),
            feeds: vec![api::Feed::default()],
            ..api::Target::default()
        }
    }

    #[test]
    fn openapi_matches_the_shared_response_types() {
        let snapshot = api::Snapshot {
            ingest: api::Ingest {
                requests: BTreeMap::from([("http1".into(), BTreeMap::from([("204".into(), 3)]))]),
                ..api::Ingest::default()
            },
            drops: BTreeMap::from([("filtered".into(), 1)]),
            orphan_backlogs: vec![api::OrphanBacklog::default()],
            targets: vec![target()],
            recent_errors: vec![api::RecentError {
                status: Some(401),
                ..api::RecentError::default()
            }],
            deployments: vec![api::DeploymentStat {
                state: "failing".into(),
                samples_dropped_1m: BTreeMap::from([("rejected".into(), 1)]),
                last_error: Some(api::LastError::default()),
                ..api::DeploymentStat::default()
            }],
            ..api::Snapshot::default()
        };
        check("Snapshot", &snapshot, true);
        check("Target", &target(), true);
        check("Applied", &api::Applied::default(), true);
        check("Planned", &api::Planned::default(), true);
        check("Error", &api::ErrorBody::default(), true);
        let status = api::ExportStatus {
            state: "failing".into(),
            last_success_at: Some("2026-11-29T00:00:00Z".into()),
            last_error: Some(api::LastError {
                status: Some(401),
                ..api::LastError::default()
            }),
            samples_dropped_1m: [("rejected".to_owned(), 1)].into(),
            samples_dropped: [("rejected".to_owned(), 1)].into(),
            gateways: vec![api::GatewayReport::default()],
            ..api::ExportStatus::default()
        };
        let effective = api::EffectiveExport {
            source_scope: "WORKSPACE".into(),
            metrics_export: json!({"endpoint": "http://p/w"}),
            status: Some(status.clone()),
            ..api::EffectiveExport::default()
        };
        check("EffectiveExport", &effective, true);
        check("ExportStatus", &status, true);
        let all = api::ExportStatuses {
            id: "e".into(),
            items: vec![api::DeploymentExportStatus {
                deployment_id: "d".into(),
                target_id: "t".into(),
                status: Some(status),
            }],
            next: Some("d".into()),
        };
        check("ExportStatuses", &all, true);
        let limits = api::LimitsStatus {
            series: Some(api::SeriesLimitStatus::default()),
            cluster_series: Some(api::SeriesLimitStatus::default()),
        };
        check("LimitsStatus", &limits, true);
    }

    #[test]
    fn openapi_drift_is_found() {
        // The check itself can fail: a renamed field and a wrong type.
        let doc = document();
        let schema = &doc["components"]["schemas"]["Applied"];
        let mut v = serde_json::to_value(api::Applied::default()).unwrap();
        let n = v["version"].take();
        v.as_object_mut().unwrap().remove("version");
        v["registryVersion"] = n;
        v["targets"] = json!("3");
        let problems = drift(&v, schema, &doc, "Applied", true);
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn openapi_matches_the_registry_as_served_and_as_the_console_reads_it() {
        let text = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/registry.yaml"
        ))
        .unwrap();
        let registry = Registry::from_document(Document::parse(&text, true).unwrap()).unwrap();
        let served = masked_document(&registry);
        check("Registry", &served, false);
        // The console's read view, every field set.
        let link = api::Link {
            scope: "DEPLOYMENT".into(),
            overrides: json!({"metricsExport": {"endpoint": "http://o/w"}, "setFields": []}),
            ..api::Link::default()
        };
        let read = api::Registry {
            clusters: vec![api::Cluster::default()],
            workspaces: vec![api::Workspace::default()],
            deployments: vec![api::Deployment {
                kind: "HOSTED".into(),
                ..api::Deployment::default()
            }],
            metrics_exports: vec![api::MetricsExport {
                scope: "WORKSPACE".into(),
                links: vec![link],
                exclude_links: vec![api::Link::default()],
                metrics_export: json!({"endpoint": "http://p/w"}),
                ..api::MetricsExport::default()
            }],
        };
        check("Registry", &read, false);
        // And what the gateway serves reads into the console's view.
        let back: api::Registry = serde_json::from_value(served).unwrap();
        assert_eq!(back.clusters.len(), registry.clusters.len());
        assert!(back.metrics_exports.iter().any(|e| !e.links.is_empty()));
    }
}
