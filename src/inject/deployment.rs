//! Which objects `ebb inject` edits, and what it takes from a Deployment around its pod template: a Deployment
//! labelled `ebb.dev/service` is a service whose name is the Deployment's, configured by its annotations.

use ebb_config::GlobalConfig;
use ebb_config::names::LABEL_SERVICE;
use ebb_inject::{Service, inject_template};
use serde_json::Value;

use crate::manifest::{at, at_mut, str_at, string_map};

/// What injecting one object did.
pub struct Outcome {
    /// Whether the object differs from the input.
    pub changed: bool,
    /// Notes for the user.
    pub warnings: Vec<String>,
}

/// Injects `object` when it is a Deployment labelled `ebb.dev/service`: `Ok(None)` for any other object.
pub fn inject_object(
    object: &mut Value,
    global: &GlobalConfig,
    image: &str,
) -> Result<Option<Outcome>, Vec<String>> {
    if str_at(object, &["kind"]) != Some("Deployment")
        || at(object, &["metadata", "labels", LABEL_SERVICE]).is_none()
    {
        return Ok(None);
    }
    let before = object.clone();
    let warnings = inject_deployment(object, global, image)?;
    Ok(Some(Outcome { changed: *object != before, warnings }))
}

/// Checks the Deployment's name, label and annotations, and injects its pod template.
fn inject_deployment(
    deployment: &mut Value,
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
        warnings.push(format!(
            "label {LABEL_SERVICE} is {label:?} but must equal the Deployment's name {name:?}"
        ));
    }
    let (annotations, not_strings) = string_map(at(deployment, &["metadata", "annotations"]));
    for key in &not_strings {
        let value = &annotations[key];
        errors.push(format!("{key}: {value}: annotation values must be strings; quote it: \"{value}\""));
    }
    let template = at(deployment, &["spec", "template"]).unwrap_or(&Value::Null);
    let service = Service { name: &name, annotations: &annotations, global };
    let injection = match inject_template(template, &service, image) {
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
    if let Some(template) = at_mut(deployment, &["spec", "template"]) {
        *template = injection.template;
    }
    Ok(warnings)
}
