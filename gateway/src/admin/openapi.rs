//! The OpenAPI 3.0 document of the admin API, written by hand from the routes
//! in [`super::api`] (a test checks that every route is in it).

use serde_json::{json, Value};

/// The document served at `GET /api/v1/openapi.json`.
pub fn document() -> Value {
    let error = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let errors = json!({"400": error, "401": error, "404": error, "409": error});
    let mut paths = serde_json::Map::new();
    for (plural, schema) in [
        ("clusters", "Cluster"),
        ("workspaces", "Workspace"),
        ("deployments", "Deployment"),
        ("metrics-exports", "MetricsExport"),
    ] {
        let obj = json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
        let ok = json!({"description": "the object, secrets masked", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
        let mut collection = json!({
            "get": {"summary": format!("List {plural}"), "responses": {"200": {"description": "{\"items\": [...]}", "content": {"application/json": {"schema": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{schema}")}}}}}}}}},
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
            "responses": {"200": {"description": "{\"items\": [{id, objectKey, sourceScope, sourceScopeEntityId, targetId, metricsExport, setFields}]}",
                "content": {"application/json": {"schema": {"type": "object"}}}}, "404": error}}}),
    );
    paths.insert(
        "/api/v1/registry".into(),
        json!({
            "get": {"summary": "The whole declarative registry (JSON, or YAML with Accept: application/yaml), secrets masked",
                "responses": {"200": {"description": "document", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Registry"}}, "application/yaml": {"schema": {"$ref": "#/components/schemas/Registry"}}}}}},
            "put": {"summary": "Replace the registry atomically (JSON or YAML by Content-Type)",
                "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Registry"}}, "application/yaml": {"schema": {"$ref": "#/components/schemas/Registry"}}}},
                "responses": {"200": {"description": "applied: version and counts"}, "400": error, "401": error}},
        }),
    );
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
            "maxBytesPerSend": {"oneOf": [s("integer"), s("string")]},
            "protocol": {"type": "string", "enum": ["V1", "V2"]}}},
        "unsetFields": {"type": "array", "items": s("string"), "description": "in a link's overrides only; not stored"}}});
    let link = json!({"type": "object", "required": ["scope", "scopeEntityId"], "properties": {
        "scope": {"type": "string", "enum": ["DEPLOYMENT"]}, "scopeEntityId": s("string"),
        "overrides": {"type": "object", "properties": {"metricsExport": {"$ref": "#/components/schemas/ExportFields"},
            "setFields": {"type": "array", "items": s("string"), "readOnly": true}}}}});
    let set_fields = json!({"type": "array", "items": s("string"), "readOnly": true});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Fanout admin API", "version": env!("CARGO_PKG_VERSION")},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": s("string"), "problems": {"type": "array", "items": s("string")}}},
                "Cluster": {"type": "object", "required": ["id", "organizationId", "cloudProvider", "cloudRegion", "ingestToken"], "properties": {
                    "id": s("string"), "organizationId": s("string"), "cloudProvider": s("string"), "cloudRegion": s("string"),
                    "ingestToken": secret, "setFields": set_fields}},
                "Workspace": {"type": "object", "required": ["id", "organizationId"], "properties": {
                    "id": s("string"), "organizationId": s("string"), "name": s("string")}},
                "Deployment": {"type": "object", "required": ["id", "workspaceId", "clusterId", "namespace", "type"], "properties": {
                    "id": s("string"), "workspaceId": s("string"), "clusterId": s("string"), "namespace": s("string"),
                    "type": {"type": "string", "enum": ["HOSTED", "HYBRID"]}, "name": s("string")}},
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
