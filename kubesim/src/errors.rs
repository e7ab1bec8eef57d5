//! API errors worded like the real API server's.
//!
//! Source: `k8s.io/apimachinery/pkg/api/errors/errors.go` (NewNotFound, NewAlreadyExists,
//! NewConflict, NewInvalid, NewForbidden, NewBadRequest, NewMethodNotSupported, NewGone) and
//! the `Status` kind (https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/status/).

use super::api::ApiError;
use super::schema::FieldError;

fn err(code: u16, reason: &str, message: String) -> ApiError {
    ApiError {
        code,
        reason: reason.into(),
        message,
    }
}

/// 404 `persistentvolumeclaims "x" not found`
pub fn not_found(qualified: &str, name: &str) -> ApiError {
    err(404, "NotFound", format!("{qualified} \"{name}\" not found"))
}

/// 409 `persistentvolumeclaims "x" already exists`
pub fn already_exists(qualified: &str, name: &str) -> ApiError {
    err(
        409,
        "AlreadyExists",
        format!("{qualified} \"{name}\" already exists"),
    )
}

/// 409 on a stale resourceVersion.
pub fn conflict_modified(qualified: &str, name: &str) -> ApiError {
    err(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {qualified} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
    )
}

/// 409 with a custom cause (`Operation cannot be fulfilled on ...: <why>`).
pub fn conflict(qualified: &str, name: &str, why: &str) -> ApiError {
    err(
        409,
        "Conflict",
        format!("Operation cannot be fulfilled on {qualified} \"{name}\": {why}"),
    )
}

/// 422 `Kind.group "name" is invalid: [errors]`
pub fn invalid(group_kind: &str, name: &str, errs: &[FieldError]) -> ApiError {
    let list: Vec<String> = errs.iter().map(FieldError::message).collect();
    let joined = if list.len() == 1 {
        list[0].clone()
    } else {
        format!("[{}]", list.join(", "))
    };
    err(
        422,
        "Invalid",
        format!("{group_kind} \"{name}\" is invalid: {joined}"),
    )
}

/// 422 with one field error.
pub fn invalid1(group_kind: &str, name: &str, field: &str, detail: &str) -> ApiError {
    invalid(
        group_kind,
        name,
        &[FieldError {
            field: field.into(),
            detail: detail.into(),
            reason: "FieldValueInvalid",
        }],
    )
}

/// 400 BadRequest.
pub fn bad_request(message: impl Into<String>) -> ApiError {
    err(400, "BadRequest", message.into())
}

/// 403 Forbidden with a message already formatted.
pub fn forbidden(message: impl Into<String>) -> ApiError {
    err(403, "Forbidden", message.into())
}

/// 405 MethodNotAllowed.
pub fn method_not_supported(qualified: &str, action: &str) -> ApiError {
    err(
        405,
        "MethodNotAllowed",
        format!("{action} is not supported on resources of kind \"{qualified}\""),
    )
}

/// 410 Gone / Expired for a too old resourceVersion in a watch.
pub fn expired(requested: u64, oldest: u64) -> ApiError {
    err(
        410,
        "Expired",
        format!("too old resource version: {requested} ({oldest})"),
    )
}

/// 500.
pub fn internal(message: impl Into<String>) -> ApiError {
    err(500, "InternalError", message.into())
}

/// 415 for a patch type the resource does not take.
pub fn unsupported_media_type(message: impl Into<String>) -> ApiError {
    err(415, "UnsupportedMediaType", message.into())
}

/// `Kind.group` as `GroupKind.String()` prints it (`PersistentVolumeClaim`,
/// `VolumeBackup.volbackup.io`).
pub fn group_kind(group: &str, kind: &str) -> String {
    if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    }
}
