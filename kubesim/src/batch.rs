//! Defaulting and validation of the `batch/v1` kinds on create, as the API server does them
//! (`pkg/apis/batch/v1/defaults.go`, `pkg/apis/batch/validation`), reduced to the fields the
//! Job and CronJob controllers read.

use serde_json::{Value, json};

use super::api::ApiError;
use super::controllers::cronjob::Schedule;
use super::errors;

/// The longest CronJob name: its Jobs append `-<minutes>` (11 characters) to it.
const MAX_CRONJOB_NAME: usize = 52;

/// A new Job: defaults, the generated selector and pod labels, the restart policy.
pub fn admit_job(obj: &mut Value, gk: &str, name: &str, uid: &str) -> Result<(), ApiError> {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return Err(errors::invalid1(
            gk,
            name,
            "spec.template",
            "Required value",
        ));
    };
    check_template(spec.get("template"), "spec.template", gk, name)?;
    spec.entry("parallelism").or_insert_with(|| json!(1));
    spec.entry("completions").or_insert_with(|| json!(1));
    spec.entry("backoffLimit").or_insert_with(|| json!(6));
    spec.entry("completionMode")
        .or_insert_with(|| json!("NonIndexed"));
    spec.entry("suspend").or_insert_with(|| json!(false));
    spec.entry("podReplacementPolicy")
        .or_insert_with(|| json!("TerminatingOrFailed"));
    if spec.get("manualSelector").and_then(Value::as_bool) != Some(true) {
        let labels = json!({
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        });
        spec.insert(
            "selector".into(),
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
        );
        let template = spec.get_mut("template").expect("checked above");
        let meta = template
            .as_object_mut()
            .expect("checked above")
            .entry("metadata")
            .or_insert_with(|| json!({}));
        let l = meta
            .as_object_mut()
            .ok_or_else(|| errors::invalid1(gk, name, "spec.template.metadata", "Invalid value"))?
            .entry("labels")
            .or_insert_with(|| json!({}));
        for (k, v) in labels.as_object().expect("object") {
            l[k] = v.clone();
        }
    }
    Ok(())
}

/// A new CronJob: the schedule and time zone parse, the name fits, the defaults.
pub fn admit_cronjob(obj: &mut Value, gk: &str, name: &str) -> Result<(), ApiError> {
    if name.len() > MAX_CRONJOB_NAME {
        return Err(errors::invalid1(
            gk,
            name,
            "metadata.name",
            &format!(
                "Invalid value: \"{name}\": must be no more than {MAX_CRONJOB_NAME} characters"
            ),
        ));
    }
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return Err(errors::invalid1(
            gk,
            name,
            "spec.schedule",
            "Required value",
        ));
    };
    let schedule = spec.get("schedule").and_then(Value::as_str).unwrap_or("");
    if schedule.is_empty() {
        return Err(errors::invalid1(
            gk,
            name,
            "spec.schedule",
            "Required value",
        ));
    }
    let zone = spec.get("timeZone").and_then(Value::as_str);
    if let Err(e) = Schedule::parse(schedule, zone) {
        let field = if e.starts_with("unknown time zone") {
            "spec.timeZone"
        } else {
            "spec.schedule"
        };
        let value = if field == "spec.timeZone" {
            zone.unwrap_or("")
        } else {
            schedule
        };
        return Err(errors::invalid1(
            gk,
            name,
            field,
            &format!("Invalid value: \"{value}\": {e}"),
        ));
    }
    match spec.get("concurrencyPolicy").and_then(Value::as_str) {
        None => {
            spec.insert("concurrencyPolicy".into(), json!("Allow"));
        }
        Some("Allow" | "Forbid" | "Replace") => {}
        Some(other) => {
            return Err(errors::invalid1(
                gk,
                name,
                "spec.concurrencyPolicy",
                &format!(
                    "Unsupported value: \"{other}\": supported values: \"Allow\", \"Forbid\", \"Replace\""
                ),
            ));
        }
    }
    spec.entry("suspend").or_insert_with(|| json!(false));
    spec.entry("successfulJobsHistoryLimit")
        .or_insert_with(|| json!(3));
    spec.entry("failedJobsHistoryLimit")
        .or_insert_with(|| json!(1));
    check_template(
        spec.get("jobTemplate")
            .and_then(|t| t.pointer("/spec/template")),
        "spec.jobTemplate.spec.template",
        gk,
        name,
    )
}

/// A Job's pod template: containers, and a restart policy a Job allows.
fn check_template(
    template: Option<&Value>,
    field: &str,
    gk: &str,
    name: &str,
) -> Result<(), ApiError> {
    let Some(t) = template.filter(|t| t.is_object()) else {
        return Err(errors::invalid1(gk, name, field, "Required value"));
    };
    if t.pointer("/spec/containers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        return Err(errors::invalid1(
            gk,
            name,
            &format!("{field}.spec.containers"),
            "Required value",
        ));
    }
    match t.pointer("/spec/restartPolicy").and_then(Value::as_str) {
        Some("Never" | "OnFailure") => Ok(()),
        Some(other) => Err(errors::invalid1(
            gk,
            name,
            &format!("{field}.spec.restartPolicy"),
            &format!("Unsupported value: \"{other}\": supported values: \"OnFailure\", \"Never\""),
        )),
        None => Err(errors::invalid1(
            gk,
            name,
            &format!("{field}.spec.restartPolicy"),
            "Required value: valid values: \"OnFailure\", \"Never\"",
        )),
    }
}
