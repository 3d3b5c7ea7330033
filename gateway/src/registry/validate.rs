//! Validation of a whole registry against the rules of SPEC §3.
//!
//! [`validate`] walks every object and collects every problem, so a client
//! sees all that is wrong with a document at once. Problems name the object
//! (`metricsExport prom-dev: link dep-2: ...`) and never contain a secret.
//! Field-level checks of an export (endpoint, auth, headers, labels, delivery)
//! live in [`super::resolve::compile`] and run both on the export's own fields
//! and on each link's merged fields, since an override can break them too.

use std::collections::{HashMap, HashSet};

use super::model::{DeploymentType, Registry, Scope};
use super::resolve::{compile, merge};

/// A registry that breaks the rules; `problems` lists every one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid registry: {}", problems.join("; "))]
pub struct ValidationError {
    /// One line per problem.
    pub problems: Vec<String>,
}

/// A limit that is set must be at least 1 (0 would refuse everything:
/// remove the cluster or its exports instead).
fn check_limits(at: &str, limits: &super::model::Limits, push: &mut impl FnMut(String)) {
    for (name, value) in [
        ("samplesPerSecond", limits.samples_per_second),
        ("series", limits.series),
    ] {
        if value == Some(0) {
            push(format!("{at}: limits.{name} must be at least 1 (or unset)"));
        }
    }
}

/// Checks every rule of SPEC §3 on `registry`.
pub fn validate(registry: &Registry) -> Result<(), ValidationError> {
    let mut problems = Vec::new();
    let mut push = |p: String| problems.push(p);

    let mut tokens: HashMap<&str, &str> = HashMap::new();
    for (id, c) in &registry.clusters {
        let at = format!("cluster {}", shown(id));
        check_id(&at, id, &mut push);
        for (name, value) in [
            ("organizationId", &c.organization_id),
            ("cloudProvider", &c.cloud_provider),
            ("cloudRegion", &c.cloud_region),
        ] {
            if value.is_empty() {
                push(format!("{at}: {name} is required"));
            }
        }
        check_limits(&at, &c.limits, &mut push);
        if c.ingest_token.is_empty() {
            push(format!("{at}: ingestToken is required"));
        } else if let Some(other) = tokens.insert(c.ingest_token.expose(), id) {
            push(format!(
                "{at}: ingestToken is the same as cluster {other}'s; every cluster needs its own"
            ));
        }
    }

    for (id, w) in &registry.workspaces {
        let at = format!("workspace {}", shown(id));
        check_id(&at, id, &mut push);
        if w.organization_id.is_empty() {
            push(format!("{at}: organizationId is required"));
        }
    }

    let mut namespaces: HashMap<(&str, &str), &str> = HashMap::new();
    for (id, d) in &registry.deployments {
        let at = format!("deployment {}", shown(id));
        check_id(&at, id, &mut push);
        if !registry.workspaces.contains_key(&d.workspace_id) {
            push(format!(
                "{at}: workspace {:?} does not exist",
                d.workspace_id
            ));
        }
        if !registry.clusters.contains_key(&d.cluster_id) {
            push(format!("{at}: cluster {:?} does not exist", d.cluster_id));
        }
        check_limits(&at, &d.limits, &mut push);
        if d.limits.samples_per_second.is_some() {
            push(format!(
                "{at}: limits.samplesPerSecond applies to clusters only (a request mixes Deployments, and refusing it would refuse its neighbours too); limit the Deployment's series instead"
            ));
        }
        if d.namespace.is_empty() {
            push(format!("{at}: namespace is required"));
        } else if let Some(other) = namespaces.insert((&d.cluster_id, &d.namespace), id) {
            push(format!(
                "{at}: namespace {:?} is already used by deployment {other} on cluster {}",
                d.namespace, d.cluster_id
            ));
        }
    }

    for (id, e) in &registry.metrics_exports {
        let at = format!("metricsExport {}", shown(id));
        check_id(&at, id, &mut push);
        if e.object_key.is_empty() {
            push(format!("{at}: objectKey is required"));
        }
        match e.scope {
            Scope::Workspace => {
                if !registry.workspaces.contains_key(&e.scope_entity_id) {
                    push(format!(
                        "{at}: workspace {:?} does not exist",
                        e.scope_entity_id
                    ));
                }
            }
            Scope::Deployment => {
                if !registry.deployments.contains_key(&e.scope_entity_id) {
                    push(format!(
                        "{at}: deployment {:?} does not exist",
                        e.scope_entity_id
                    ));
                }
                if e.auto_link_deployments {
                    push(format!(
                        "{at}: autoLinkDeployments applies to WORKSPACE scope only"
                    ));
                }
                if !e.links.is_empty() || !e.exclude_links.is_empty() {
                    push(format!(
                        "{at}: links and excludeLinks apply to WORKSPACE scope only"
                    ));
                }
            }
        }
        if let Err(ps) = compile(&e.metrics_export) {
            for p in ps {
                push(format!("{at}: metricsExport.{p}"));
            }
        }
        if !e.metrics_export.unset_fields.is_empty() {
            push(format!(
                "{at}: unsetFields is only valid in a link's overrides"
            ));
        }

        let workspace_scope = e.scope == Scope::Workspace;
        let mut linked = HashSet::new();
        for link in &e.links {
            let dep_id = &link.scope_entity_id;
            let at = format!("{at}: link {}", shown(dep_id));
            if !linked.insert(dep_id.as_str()) {
                push(format!("{at}: linked more than once"));
            }
            if link.scope != Scope::Deployment {
                push(format!("{at}: a link's scope must be DEPLOYMENT"));
            }
            if workspace_scope {
                check_member(&at, registry, dep_id, &e.scope_entity_id, true, &mut push);
            }
            if let Some(ov) = &link.overrides {
                if !ov.metrics_export.unset_fields.is_empty() {
                    push(format!(
                        "{at}: unsetFields was not applied (internal error)"
                    ));
                }
                if let Err(ps) = compile(&merge(&e.metrics_export, &ov.metrics_export)) {
                    for p in ps {
                        push(format!("{at}: with overrides, metricsExport.{p}"));
                    }
                }
            }
        }
        let mut excluded = HashSet::new();
        for ex in &e.exclude_links {
            let dep_id = &ex.scope_entity_id;
            let at = format!("{at}: excludeLinks {}", shown(dep_id));
            if !excluded.insert(dep_id.as_str()) {
                push(format!("{at}: excluded more than once"));
            }
            if ex.scope != Scope::Deployment {
                push(format!("{at}: an exclusion's scope must be DEPLOYMENT"));
            }
            if linked.contains(dep_id.as_str()) {
                push(format!("{at}: the deployment is both linked and excluded"));
            }
            if workspace_scope {
                check_member(&at, registry, dep_id, &e.scope_entity_id, false, &mut push);
            }
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(ValidationError { problems })
    }
}

/// A link or exclusion must name a Deployment of the export's Workspace; a
/// link must not name a HYBRID one (it would never receive the export).
fn check_member(
    at: &str,
    registry: &Registry,
    deployment_id: &str,
    workspace_id: &str,
    is_link: bool,
    push: &mut impl FnMut(String),
) {
    match registry.deployments.get(deployment_id) {
        None => push(format!("{at}: deployment does not exist")),
        Some(d) => {
            if d.workspace_id != workspace_id {
                push(format!(
                    "{at}: deployment belongs to workspace {}, not {workspace_id}",
                    d.workspace_id
                ));
            }
            if is_link && d.kind == DeploymentType::Hybrid {
                push(format!(
                    "{at}: HYBRID deployments receive DEPLOYMENT-scope exports only"
                ));
            }
        }
    }
}

/// An id as errors show it: whole up to 64 characters, else its start and
/// its length (a 100,000-character id is not echoed back whole).
pub(crate) fn shown(id: &str) -> String {
    if id.chars().count() <= 64 {
        return id.to_owned();
    }
    let start: String = id.chars().take(32).collect();
    format!("{start}… ({} bytes)", id.len())
}

fn check_id(at: &str, id: &str, push: &mut impl FnMut(String)) {
    if id.is_empty() {
        push(format!("{at}: id is required"));
    } else if id.len() > 253
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        push(format!(
            "{at}: id must be 1 to 253 characters of letters, digits, '-', '_' or '.'"
        ));
    }
}
