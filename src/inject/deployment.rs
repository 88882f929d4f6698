//! Which objects `ebb inject` edits, and what it takes from a scale target around its pod template: a
//! Deployment (or a StatefulSet, an Argo Rollout, a LeaderWorkerSet: the kinds whose pod template of the
//! role that takes traffic ebb knows) labelled `ebb.dev/service` is a service whose name is the object's,
//! configured by its annotations.

use ebb_config::GlobalConfig;
use ebb_config::names::LABEL_SERVICE;
use ebb_config::targets::TargetKind;
use ebb_inject::{Service, add_instance_gate, inject_template};
use serde_json::Value;

use crate::manifest::{at, at_mut, str_at, string_map};

/// What injecting one object did.
pub struct Outcome {
    /// Whether the object differs from the input.
    pub changed: bool,
    /// Notes for the user.
    pub warnings: Vec<String>,
}

/// Injects `object` when it is a scale target labelled `ebb.dev/service`: `Ok(None)` for any other object.
/// A labelled object of a kind whose pod template ebb does not know is left as it is, with a warning: the
/// admission webhook injects its pods when they are created.
pub fn inject_object(
    object: &mut Value,
    global: &GlobalConfig,
    image: &str,
) -> Result<Option<Outcome>, Vec<String>> {
    if at(object, &["metadata", "labels", LABEL_SERVICE]).is_none() {
        return Ok(None);
    }
    let kind = str_at(object, &["kind"]).unwrap_or_default().to_owned();
    let api_version = str_at(object, &["apiVersion"]).unwrap_or("apps/v1").to_owned();
    let Some(target) = TargetKind::of_manifest(&api_version, &kind) else { return Ok(None) };
    let template = target.entry_templates().and_then(|paths| paths.iter().find(|p| at(object, p).is_some()));
    let Some(template) = template else {
        let warning = format!(
            "{kind}: ebb does not know where this kind keeps its pod template; left as it is (the admission \
             webhook adds the queue-proxy to its pods when they are created)"
        );
        return Ok(Some(Outcome { changed: false, warnings: vec![warning] }));
    };
    let before = object.clone();
    let warnings = inject_target(object, &kind, template, global, image)?;
    // A replica of several pods (a LeaderWorkerSet's group): its entry is Ready only with its instance.
    if global.instance_shape(&target).is_some()
        && let Some(slot) = at_mut(object, template)
    {
        add_instance_gate(slot, &["spec"]);
    }
    Ok(Some(Outcome { changed: *object != before, warnings }))
}

/// Checks the object's name, label and annotations, and injects its pod template at `template`.
fn inject_target(
    deployment: &mut Value,
    kind: &str,
    template: &[&str],
    global: &GlobalConfig,
    image: &str,
) -> Result<Vec<String>, Vec<String>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let name = str_at(deployment, &["metadata", "name"]).unwrap_or_default().to_owned();
    if name.is_empty() {
        errors.push("has no metadata.name; the sidecar needs the service's name".to_owned());
    }
    let label = str_at(deployment, &["metadata", "labels", LABEL_SERVICE]).unwrap_or_default();
    if !name.is_empty() && label != name {
        warnings
            .push(format!("label {LABEL_SERVICE} is {label:?} but must equal the {kind}'s name {name:?}"));
    }
    let (annotations, not_strings) = string_map(at(deployment, &["metadata", "annotations"]));
    for key in &not_strings {
        let value = &annotations[key];
        errors.push(format!("{key}: {value}: annotation values must be strings; quote it: \"{value}\""));
    }
    let template_value = at(deployment, template).unwrap_or(&Value::Null);
    let service = Service { name: &name, annotations: &annotations, global };
    let injection = match inject_template(template_value, &service, image) {
        Ok(injection) => injection,
        Err(more) => {
            errors.extend(more);
            return Err(errors);
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    warnings.extend(injection.warnings);
    if let Some(slot) = at_mut(deployment, template) {
        *slot = injection.template;
    }
    Ok(warnings)
}
