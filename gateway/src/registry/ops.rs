//! Edits of the registry as the admin API and `fanout apply` make them: create,
//! replace, JSON merge patch, delete, replace-all. Plain functions on a
//! [`Registry`], run by [`super::live::Live::update`] inside the store's write
//! transaction; the result is validated as a whole afterwards.
//!
//! Each edit also does the write-side duties of SPEC §3: a `"***"` secret keeps
//! the stored value ([`restore_secrets`]), and override `unsetFields` are applied
//! and dropped ([`apply_unset_fields`]).

use serde_json::Value;

use super::model::{
    apply_unset_fields, merge_patch, restore_secrets, Document, Kind, Object, Registry, Scope,
};
use super::store::UpdateError;
use super::validate::validate;

/// Creates an object; 409 if the id exists.
pub fn create(registry: &mut Registry, value: Value, kind: Kind) -> Result<(), UpdateError> {
    let mut object = parse(kind, value)?;
    if registry.get(kind, object.id()).is_some() {
        return Err(UpdateError::Conflict(vec![format!(
            "{} {} already exists",
            kind.as_str(),
            object.id()
        )]));
    }
    prepare(&mut object, None)?;
    registry.insert(object);
    Ok(())
}

/// Replaces an existing object; the body's `id`, if any, must match `id`.
pub fn replace(
    registry: &mut Registry,
    kind: Kind,
    id: &str,
    mut value: Value,
) -> Result<(), UpdateError> {
    let old = registry
        .get(kind, id)
        .ok_or_else(|| UpdateError::NotFound(format!("{} {id}", kind.as_str())))?;
    set_id(&mut value, id)?;
    let mut object = parse(kind, value)?;
    prepare(&mut object, Some(&old))?;
    registry.insert(object);
    Ok(())
}

/// Applies an RFC 7396 JSON merge patch to an existing object.
pub fn patch(
    registry: &mut Registry,
    kind: Kind,
    id: &str,
    patch: Value,
) -> Result<(), UpdateError> {
    let old = registry
        .get(kind, id)
        .ok_or_else(|| UpdateError::NotFound(format!("{} {id}", kind.as_str())))?;
    if !patch.is_object() {
        return Err(UpdateError::Invalid(vec![
            "a merge patch must be a JSON object".into(),
        ]));
    }
    let mut value = old.to_stored_json();
    merge_patch(&mut value, &patch);
    set_id(&mut value, id)?;
    let mut object = parse(kind, value)?;
    prepare(&mut object, Some(&old))?;
    registry.insert(object);
    Ok(())
}

/// Deletes an object; 409 while other objects refer to it.
pub fn delete(registry: &mut Registry, kind: Kind, id: &str) -> Result<(), UpdateError> {
    if registry.get(kind, id).is_none() {
        return Err(UpdateError::NotFound(format!("{} {id}", kind.as_str())));
    }
    let referrers = referrers(registry, kind, id);
    if !referrers.is_empty() {
        return Err(UpdateError::Conflict(
            referrers
                .into_iter()
                .map(|r| format!("{} {id} is still referred to by {r}", kind.as_str()))
                .collect(),
        ));
    }
    registry.remove(kind, id);
    Ok(())
}

/// Replaces the whole registry with a declarative document.
pub fn replace_all(registry: &mut Registry, doc: Document) -> Result<(), UpdateError> {
    let mut next = Registry::from_document(doc).map_err(UpdateError::Invalid)?;
    let mut problems = Vec::new();
    let mut prepared = Registry::default();
    for mut object in next.objects() {
        let old = registry.get(object.kind(), object.id());
        if let Err(UpdateError::Invalid(ps)) = prepare(&mut object, old.as_ref()) {
            problems.extend(ps);
        }
        prepared.insert(object);
    }
    if !problems.is_empty() {
        return Err(UpdateError::Invalid(problems));
    }
    next = prepared;
    *registry = next;
    Ok(())
}

/// What replacing `current` with `doc` would do, changing nothing (`PUT
/// /api/v1/registry?dryRun=true`, `fanout apply --dry-run`, and `fanout
/// check` against an empty registry): the registry that would be installed,
/// checked exactly as [`super::live::Live::update`] checks a change
/// ([`replace_all`], then [`validate`] of the whole), and the objects it
/// would create, change and remove, each as `kind/id`, in registry order.
pub fn plan(current: &Registry, doc: Document) -> Result<(Registry, Plan), UpdateError> {
    let mut next = current.clone();
    replace_all(&mut next, doc)?;
    validate(&next).map_err(|e| UpdateError::Invalid(e.problems))?;
    let key = |o: &Object| format!("{}/{}", o.kind().as_str(), o.id());
    let mut plan = Plan::default();
    for object in next.objects() {
        match current.get(object.kind(), object.id()) {
            None => plan.created.push(key(&object)),
            Some(old) if old != object => plan.changed.push(key(&object)),
            Some(_) => {}
        }
    }
    for object in current.objects() {
        if next.get(object.kind(), object.id()).is_none() {
            plan.removed.push(key(&object));
        }
    }
    Ok((next, plan))
}

/// The objects a [`plan`] creates, changes and removes (`kind/id`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// New ids.
    pub created: Vec<String>,
    /// Ids whose object differs (a masked `"***"` secret is not a change).
    pub changed: Vec<String>,
    /// Ids not in the document.
    pub removed: Vec<String>,
}

fn parse(kind: Kind, value: Value) -> Result<Object, UpdateError> {
    Object::from_json(kind, value)
        .map_err(|e| UpdateError::Invalid(vec![format!("{}: {e}", kind.as_str())]))
}

fn set_id(value: &mut Value, id: &str) -> Result<(), UpdateError> {
    let Some(obj) = value.as_object_mut() else {
        return Err(UpdateError::Invalid(vec![
            "the body must be a JSON object".into()
        ]));
    };
    match obj.get("id").and_then(Value::as_str) {
        Some(body_id) if body_id != id => Err(UpdateError::Invalid(vec![format!(
            "id {body_id:?} in the body does not match {id:?} in the path; ids cannot be changed"
        )])),
        _ => {
            obj.insert("id".into(), Value::from(id));
            Ok(())
        }
    }
}

fn prepare(object: &mut Object, old: Option<&Object>) -> Result<(), UpdateError> {
    let mut problems = restore_secrets(object, old);
    if let Object::MetricsExport(e) = object {
        problems.extend(apply_unset_fields(e));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(UpdateError::Invalid(problems))
    }
}

fn referrers(registry: &Registry, kind: Kind, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    match kind {
        Kind::Cluster => {
            for d in registry.deployments.values().filter(|d| d.cluster_id == id) {
                out.push(format!("deployment {}", d.id));
            }
        }
        Kind::Workspace => {
            for d in registry
                .deployments
                .values()
                .filter(|d| d.workspace_id == id)
            {
                out.push(format!("deployment {}", d.id));
            }
            for e in registry
                .metrics_exports
                .values()
                .filter(|e| e.scope == Scope::Workspace && e.scope_entity_id == id)
            {
                out.push(format!("metricsExport {}", e.id));
            }
        }
        Kind::Deployment => {
            for e in registry.metrics_exports.values() {
                let refers = (e.scope == Scope::Deployment && e.scope_entity_id == id)
                    || e.links.iter().any(|l| l.scope_entity_id == id)
                    || e.exclude_links.iter().any(|l| l.scope_entity_id == id);
                if refers {
                    out.push(format!("metricsExport {}", e.id));
                }
            }
        }
        Kind::MetricsExport => {}
    }
    out
}
