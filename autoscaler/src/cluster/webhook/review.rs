//! The AdmissionReview (`admission.k8s.io/v1`) the API server sends and the answer it expects, and the JSON
//! Patch that turns the Pod it sent into the injected one. Pure: no I/O.

use serde_json::{Map, Value, json};

/// The parts of a request the webhook reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Echoed in the answer.
    pub uid: String,
    /// `CREATE`, `UPDATE`, ...
    pub operation: String,
    /// The object's kind (`Pod`).
    pub kind: String,
    /// The namespace the object is created in (a Pod's own `metadata.namespace` may still be empty).
    pub namespace: String,
    /// The object.
    pub object: Value,
}

/// Reads an `AdmissionReview` request.
pub fn parse(body: &[u8]) -> Result<Request, String> {
    let review: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if review["apiVersion"] != "admission.k8s.io/v1" || review["kind"] != "AdmissionReview" {
        return Err(format!(
            "expected an admission.k8s.io/v1 AdmissionReview, got {} {}",
            review["apiVersion"], review["kind"]
        ));
    }
    let request = &review["request"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let uid = text(&request["uid"]);
    if uid.is_empty() {
        return Err("the AdmissionReview has no request.uid".into());
    }
    Ok(Request {
        uid,
        operation: text(&request["operation"]),
        kind: text(&request["kind"]["kind"]),
        namespace: text(&request["namespace"]),
        object: request["object"].clone(),
    })
}

/// What the webhook answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Admit the object as it is.
    Allow {
        /// Shown to the client (`kubectl` prints them).
        warnings: Vec<String>,
    },
    /// Admit it with `patch` applied.
    Patch {
        /// JSON Patch operations.
        patch: Vec<Value>,
        /// Shown to the client.
        warnings: Vec<String>,
    },
    /// Refuse it, saying why.
    Deny {
        /// The message, naming what to fix.
        message: String,
    },
}

/// The `AdmissionReview` answering request `uid` with `verdict`.
pub fn response(uid: &str, verdict: &Verdict) -> Value {
    let mut response = json!({"uid": uid, "allowed": true});
    let warnings = match verdict {
        Verdict::Allow { warnings } => warnings,
        Verdict::Patch { patch, warnings } => {
            let bytes = serde_json::to_vec(patch).unwrap_or_default();
            response["patchType"] = json!("JSONPatch");
            response["patch"] = serde_json::to_value(k8s_openapi::ByteString(bytes)).unwrap_or_default();
            warnings
        }
        Verdict::Deny { message } => {
            response["allowed"] = json!(false);
            // 422: the object is what is wrong, as for any invalid object.
            response["status"] = json!({"code": 422, "reason": "Invalid", "message": message});
            return review(response);
        }
    };
    if !warnings.is_empty() {
        // Warnings are meant to be short (the API server truncates long ones); keep each under its limit.
        response["warnings"] = json!(warnings.iter().map(|w| cut(w, 250)).collect::<Vec<_>>());
    }
    review(response)
}

fn review(response: Value) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Whether a pod already runs a queue-proxy: a container (or init container, where a native sidecar lives)
/// named `queue-proxy` or with `EBB_UPSTREAM` in its env, as `ebb inject` writes it.
pub fn has_sidecar(pod: &Value) -> bool {
    let spec = &pod["spec"];
    let containers =
        spec["containers"].as_array().into_iter().chain(spec["initContainers"].as_array()).flatten();
    containers.into_iter().any(|c| {
        c["name"] == "queue-proxy"
            || c["env"].as_array().is_some_and(|env| env.iter().any(|e| e["name"] == "EBB_UPSTREAM"))
    })
}

/// The pod's controller: `(kind, name)` of its owner reference with `controller: true`.
pub fn controller(object: &Value) -> Option<(String, String)> {
    let owners = object["metadata"]["ownerReferences"].as_array()?;
    let owner = owners.iter().find(|o| o["controller"] == true)?;
    Some((owner["kind"].as_str()?.to_owned(), owner["name"].as_str()?.to_owned()))
}

/// The JSON Patch from `before` to `after`, two pods: one operation per changed field of `spec` and per
/// changed `metadata.labels` and `metadata.annotations` (whole maps), the only parts injection changes.
pub fn json_patch(before: &Value, after: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    let empty = Map::new();
    let meta = |v: &Value| v["metadata"].as_object().cloned().unwrap_or_default();
    let (meta_before, meta_after) = (meta(before), meta(after));
    if meta_before.is_empty() && (meta_after.contains_key("labels") || meta_after.contains_key("annotations"))
    {
        ops.push(json!({"op": "add", "path": "/metadata", "value": {}}));
    }
    for key in ["labels", "annotations"] {
        diff_key(&mut ops, "/metadata", key, meta_before.get(key), meta_after.get(key));
    }
    let spec_before = before["spec"].as_object().unwrap_or(&empty);
    let spec_after = after["spec"].as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = spec_before.keys().chain(spec_after.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        diff_key(&mut ops, "/spec", key, spec_before.get(key), spec_after.get(key));
    }
    ops
}

fn diff_key(ops: &mut Vec<Value>, parent: &str, key: &str, before: Option<&Value>, after: Option<&Value>) {
    let path = format!("{parent}/{}", key.replace('~', "~0").replace('/', "~1"));
    match (before, after) {
        (Some(b), Some(a)) if b == a => {}
        (Some(_), Some(a)) => ops.push(json!({"op": "replace", "path": path, "value": a})),
        (None, Some(a)) => ops.push(json!({"op": "add", "path": path, "value": a})),
        (Some(_), None) => ops.push(json!({"op": "remove", "path": path})),
        (None, None) => {}
    }
}

/// Applies `ops` as the API server would (for the tests: only the operations [`json_patch`] makes).
#[cfg(test)]
pub fn apply(target: &mut Value, ops: &[Value]) {
    for op in ops {
        let path = op["path"].as_str().unwrap();
        let (parent, key) = path.rsplit_once('/').unwrap();
        let key = key.replace("~1", "/").replace("~0", "~");
        let parent = target.pointer_mut(parent).unwrap().as_object_mut().unwrap();
        match op["op"].as_str().unwrap() {
            "add" | "replace" => {
                parent.insert(key, op["value"].clone());
            }
            "remove" => {
                parent.remove(&key);
            }
            other => panic!("{other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "operation": "CREATE", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "namespace": "models", "object": object},
        }))
        .unwrap()
    }

    #[test]
    fn a_request_is_read_and_answered_with_its_uid() {
        let parsed = parse(&request(json!({"metadata": {}}))).unwrap();
        assert_eq!(
            (parsed.uid.as_str(), parsed.operation.as_str(), parsed.kind.as_str()),
            ("u-1", "CREATE", "Pod")
        );
        assert_eq!(parsed.namespace, "models");
        assert!(parse(b"{}").unwrap_err().contains("AdmissionReview"));
        assert!(parse(b"nope").is_err());

        let allow = response("u-1", &Verdict::Allow { warnings: vec![] });
        assert_eq!(allow["response"], json!({"uid": "u-1", "allowed": true}));
        let deny = response("u-1", &Verdict::Deny { message: "ebb.dev/timeout: bad".into() });
        assert_eq!(deny["response"]["allowed"], false);
        assert_eq!(deny["response"]["status"]["message"], "ebb.dev/timeout: bad");
        let patch = vec![json!({"op": "add", "path": "/spec/x", "value": 1})];
        let patched = response("u-1", &Verdict::Patch { patch: patch.clone(), warnings: vec!["w".into()] });
        assert_eq!(patched["response"]["patchType"], "JSONPatch");
        assert_eq!(patched["response"]["warnings"], json!(["w"]));
        let bytes: k8s_openapi::ByteString =
            serde_json::from_value(patched["response"]["patch"].clone()).unwrap();
        assert_eq!(serde_json::from_slice::<Vec<Value>>(&bytes.0).unwrap(), patch);
    }

    #[test]
    fn the_patch_turns_the_pod_into_the_injected_one() {
        let before = json!({
            "metadata": {"generateName": "chat-7c-", "labels": {"ebb.dev/service": "chat"}},
            "spec": {"containers": [{"name": "model"}], "terminationGracePeriodSeconds": 30, "dnsPolicy": "x"},
        });
        let mut after = before.clone();
        after["spec"]["containers"] = json!([{"name": "model"}, {"name": "queue-proxy"}]);
        after["spec"]["terminationGracePeriodSeconds"] = json!(335);
        after["spec"].as_object_mut().unwrap().remove("dnsPolicy");
        after["metadata"]["annotations"] = json!({"a/b~c": "1"});
        let ops = json_patch(&before, &after);
        assert_eq!(ops.len(), 4, "{ops:?}");
        let mut patched = before.clone();
        apply(&mut patched, &ops);
        assert_eq!(patched, after);
        assert!(json_patch(&after, &after).is_empty());
        // A pod with no metadata at all gets the object first.
        let bare = json!({"spec": {}});
        let labelled = json!({"metadata": {"labels": {"a": "b"}}, "spec": {}});
        let mut patched = bare.clone();
        apply(&mut patched, &json_patch(&bare, &labelled));
        assert_eq!(patched, labelled);
    }

    #[test]
    fn sidecars_and_controllers_are_found() {
        assert!(!has_sidecar(&json!({"spec": {"containers": [{"name": "model"}]}})));
        assert!(has_sidecar(&json!({"spec": {"containers": [{"name": "model"}, {"name": "queue-proxy"}]}})));
        let env = json!({"spec": {"containers": [{"name": "qp", "env": [{"name": "EBB_UPSTREAM", "value": "x"}]}]}});
        assert!(has_sidecar(&env));
        let native = json!({"spec": {"containers": [], "initContainers": [{"name": "queue-proxy"}]}});
        assert!(has_sidecar(&native));
        let pod = json!({"metadata": {"ownerReferences": [
            {"kind": "Other", "name": "o", "controller": false},
            {"kind": "ReplicaSet", "name": "chat-7c", "controller": true},
        ]}});
        assert_eq!(controller(&pod), Some(("ReplicaSet".into(), "chat-7c".into())));
        assert_eq!(controller(&json!({"metadata": {}})), None);
    }
}
