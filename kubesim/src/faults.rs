//! Fault hooks for tests: fail the next N requests that match a verb and resource with a
//! given status, delay the responses that match, or run a test's own step just before the next
//! matching request is handled (a race made to happen every time).

use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;

use super::api::ApiError;

#[derive(Debug, Clone)]
struct Failure {
    verb: String,
    resource: String,
    remaining: usize,
    error: ApiError,
}

#[derive(Debug, Clone)]
struct Delay {
    verb: String,
    resource: String,
    by: Duration,
}

/// A step to run before a request is handled.
pub type Hook = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

struct Before {
    verb: String,
    resource: String,
    hook: Hook,
}

impl std::fmt::Debug for Before {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Before({} {})", self.verb, self.resource)
    }
}

/// The fault hooks of one cluster (shared by the API server across restarts).
#[derive(Debug, Default)]
pub struct Faults {
    failures: Mutex<Vec<Failure>>,
    delays: Mutex<Vec<Delay>>,
    before: Mutex<Vec<Before>>,
}

fn matches(rule_verb: &str, rule_res: &str, verb: &str, resource: &str) -> bool {
    (rule_verb == "*" || rule_verb == verb) && (rule_res == "*" || rule_res == resource)
}

fn reason_of(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

impl Faults {
    /// Fails the next `times` requests whose verb (`get`, `list`, `watch`, `create`, `update`,
    /// `patch`, `delete`, `deletecollection`, or `*`) and resource (`persistentvolumeclaims`,
    /// `pods/log`, `persistentvolumeclaims/status`, or `*`) match, with HTTP `code` and a
    /// `Status` body whose reason fits the code.
    pub fn fail_next(&self, verb: &str, resource: &str, times: usize, code: u16) {
        let message = format!("kubesim injected fault: {code} {}", reason_of(code));
        self.fail_next_with(
            verb,
            resource,
            times,
            ApiError {
                code,
                reason: reason_of(code).into(),
                message,
            },
        );
    }

    /// Like `fail_next` with a given error.
    pub fn fail_next_with(&self, verb: &str, resource: &str, times: usize, error: ApiError) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Failure {
                verb: verb.into(),
                resource: resource.into(),
                remaining: times,
                error,
            });
    }

    /// Delays every response whose verb and resource match by `by` (until `clear`).
    pub fn delay(&self, verb: &str, resource: &str, by: Duration) {
        self.delays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Delay {
                verb: verb.into(),
                resource: resource.into(),
                by,
            });
    }

    /// Runs `hook` once, just before the next request whose verb and resource match (as for
    /// `fail_next`) is handled, and handles that request only when the hook is done: another
    /// client's write lands between a program's read and its write, every time. The hook's own
    /// requests do not run it again.
    pub fn before_next(
        &self,
        verb: &str,
        resource: &str,
        hook: impl FnOnce() -> BoxFuture<'static, ()> + Send + 'static,
    ) {
        self.before
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Before {
                verb: verb.into(),
                resource: resource.into(),
                hook: Box::new(hook),
            });
    }

    /// For one request: the hook to run first, if one matches (taken: it runs once).
    pub fn take_before(&self, verb: &str, resource: &str) -> Option<Hook> {
        let mut hooks = self.before.lock().unwrap_or_else(|e| e.into_inner());
        let i = hooks
            .iter()
            .position(|b| matches(&b.verb, &b.resource, verb, resource))?;
        Some(hooks.remove(i).hook)
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.before
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.delays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// For one request: the error to answer with (consuming one use), and the delay.
    pub fn check(&self, verb: &str, resource: &str) -> (Option<ApiError>, Option<Duration>) {
        let mut fail = None;
        {
            let mut fs = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(f) = fs
                .iter_mut()
                .find(|f| f.remaining > 0 && matches(&f.verb, &f.resource, verb, resource))
            {
                f.remaining -= 1;
                fail = Some(f.error.clone());
            }
            fs.retain(|f| f.remaining > 0);
        }
        let delay = self
            .delays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|d| matches(&d.verb, &d.resource, verb, resource))
            .map(|d| d.by)
            .max();
        (fail, delay)
    }
}
