//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go's leaderelection
//! does it: the holder renews `renewTime` well within `leaseDurationSeconds`; anyone may take a
//! lease whose holder has not renewed within that time; every write carries the resourceVersion
//! it read, so of two replicas racing for an expired lease exactly one wins. A replica that
//! cannot renew in time stops (the process exits), so two replicas never act at once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

/// Seconds a lease is valid without renewal.
pub const LEASE_SECONDS: i32 = 15;
/// How often the holder renews.
pub const RENEW_EVERY: Duration = Duration::from_secs(4);
/// How often a standby replica looks again.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// Whether `identity` may take (or keep) the lease now.
pub fn may_take(spec: Option<&LeaseSpec>, identity: &str, now: DateTime<Utc>) -> bool {
    let Some(spec) = spec else {
        return true;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(h) if h == identity => true,
        Some(_) => {
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0);
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
            match renewed {
                None => true,
                Some(t) => {
                    let renewed_ms = t.as_millisecond();
                    now.timestamp_millis() > renewed_ms + duration * 1000
                }
            }
        }
    }
}

fn micro_now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// The lease, held by one identity.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl Elector {
    /// An elector for the Lease `namespace/name`.
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
        }
    }

    /// One attempt to take or renew the lease; `Ok(true)` when held afterwards.
    pub async fn try_acquire(&self) -> kube::Result<bool> {
        let now = Utc::now();
        let current = self.api.get_opt(&self.name).await?;
        match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(LEASE_SECONDS),
                        acquire_time: Some(micro_now()),
                        renew_time: Some(micro_now()),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                if !may_take(lease.spec.as_ref(), &self.identity, now) {
                    return Ok(false);
                }
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                    spec.holder_identity = Some(self.identity.clone());
                    spec.acquire_time = Some(micro_now());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(LEASE_SECONDS);
                spec.renew_time = Some(micro_now());
                // The resourceVersion read above makes this a compare-and-swap.
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        let mut said = false;
        loop {
            match self.try_acquire().await {
                Ok(true) => return,
                Ok(false) => {
                    if !said {
                        tracing::info!(lease = %self.name, "another replica leads; standing by");
                        said = true;
                    }
                }
                Err(e) => tracing::warn!(lease = %self.name, "cannot read or take the lease: {e}"),
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    /// Renews until a renewal fails for longer than the lease lasts; then returns (the caller
    /// must stop acting as leader).
    pub async fn keep(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match self.try_acquire().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %self.name, "the lease was taken over");
                    return;
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, "cannot renew the lease: {e}");
                    // Stop a little before the others may take it over.
                    let limit = Duration::from_secs(LEASE_SECONDS as u64) - RENEW_EVERY;
                    if last_ok.elapsed() > limit {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lease up (on a clean shutdown) so a standby takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(self.identity.as_str())
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            let _ = self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed_secs_ago: i64) -> LeaseSpec {
        let t = k8s_openapi::jiff::Timestamp::now()
            - k8s_openapi::jiff::SignedDuration::from_secs(renewed_secs_ago);
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(t)),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_held_and_renewed_by_another_cannot_be_taken() {
        assert!(!may_take(Some(&spec("b", 3)), "a", Utc::now()));
    }

    #[test]
    fn an_expired_or_empty_or_own_lease_can_be_taken() {
        assert!(may_take(Some(&spec("b", 30)), "a", Utc::now()));
        assert!(may_take(Some(&spec("a", 3)), "a", Utc::now()));
        assert!(may_take(None, "a", Utc::now()));
        assert!(may_take(Some(&LeaseSpec::default()), "a", Utc::now()));
    }
}
