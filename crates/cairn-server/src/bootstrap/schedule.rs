//! Scheduled rotation by credential age: every `interval`, the devices whose
//! device-management credential was issued more than `max_age` ago (and is in use) are rotated
//! as an operator's rotation is ([`BootstrapServer::rotate`]): the registered ones are asked to
//! bootstrap again (Execute of the Bootstrap-Request Trigger, /1/x/9), the others are marked
//! and asked when they next register or update. Each sweep that finds devices due ends with a
//! [`RotationReport`].

use std::time::Duration;

use cairn_store::StoreError;

use super::{BootstrapServer, RotationReport};
use crate::{LwM2mServer, unix_millis};

/// When credentials are rotated by age.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationSchedule {
    /// Credentials issued longer ago than this are rotated.
    pub max_age: Duration,
    /// Time between two sweeps.
    pub interval: Duration,
    /// How long a sweep's rotation waits for the devices to register with fresh credentials
    /// (the ones not done by then are reported pending, and carry on).
    pub wait: Duration,
}

impl RotationSchedule {
    /// Rotation after `max_age`, checked ten times per `max_age` (at least every second, at
    /// most every hour), each sweep waiting up to ten minutes for its devices.
    pub fn after(max_age: Duration) -> RotationSchedule {
        RotationSchedule {
            max_age,
            interval: (max_age / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600)),
            wait: Duration::from_secs(600),
        }
    }
}

/// Whether a credential issued at `issued_at_ms` is older than `max_age` at `now_ms`; one of
/// unknown age (0, from a record written before ages were kept) is.
pub fn is_due(issued_at_ms: u64, max_age: Duration, now_ms: u64) -> bool {
    let max_age_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
    issued_at_ms == 0 || now_ms.saturating_sub(issued_at_ms) > max_age_ms
}

impl BootstrapServer {
    /// The devices whose device-management credential is in use and older than `max_age` at
    /// `now_ms` (Unix milliseconds), not already marked for rotation.
    pub async fn credentials_due(
        &self,
        max_age: Duration,
        now_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        let store = &self.inner.stores.bootstrap;
        let mut due = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.list_device_endpoints(after.as_deref(), 1000).await?;
            for endpoint in page.items {
                let Some(device) = store.get_device_credentials(&endpoint).await? else {
                    continue;
                };
                let aged = device
                    .dm
                    .as_ref()
                    .is_some_and(|dm| dm.proven && is_due(dm.issued_at_ms, max_age, now_ms));
                if aged && !device.status.rotation_requested {
                    due.push(endpoint);
                }
            }
            match page.next_cursor {
                Some(cursor) => after = Some(cursor),
                None => return Ok(due),
            }
        }
    }

    /// One sweep at `now_ms`: rotates the devices due; `None` when none is.
    pub async fn rotate_due(
        &self,
        server: &LwM2mServer,
        schedule: &RotationSchedule,
        now_ms: u64,
    ) -> Result<Option<RotationReport>, StoreError> {
        let due = self.credentials_due(schedule.max_age, now_ms).await?;
        if due.is_empty() {
            return Ok(None);
        }
        tracing::info!(devices = due.len(), "scheduled rotation: credentials due");
        Ok(Some(self.rotate(server, &due, schedule.wait).await))
    }

    /// Sweeps every `schedule.interval` for as long as this server runs; `on_report` gets the
    /// report of each sweep that rotated devices.
    pub fn schedule_rotation(
        &self,
        server: &LwM2mServer,
        schedule: RotationSchedule,
        on_report: impl Fn(&RotationReport) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let inner = std::sync::Arc::downgrade(&self.inner);
        let server = server.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(schedule.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                let bootstrap = BootstrapServer { inner };
                match bootstrap
                    .rotate_due(&server, &schedule, unix_millis())
                    .await
                {
                    Ok(Some(report)) => {
                        tracing::info!(
                            rotated = report.rotated.len(),
                            pending = report.pending.len(),
                            failed = report.failed.len(),
                            "scheduled rotation done"
                        );
                        on_report(&report);
                    }
                    Ok(None) => {}
                    Err(error) => tracing::warn!(%error, "scheduled rotation: store failure"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_older_than_the_age_or_of_unknown_age_are_due() {
        let day = Duration::from_secs(86_400);
        let now = 100 * 86_400_000;
        assert!(!is_due(now - 86_400_000, day, now));
        assert!(is_due(now - 86_400_001, day, now));
        assert!(is_due(0, day, now));
        assert!(!is_due(now + 5, day, now), "a clock step back is not age");
    }

    #[test]
    fn sweeps_run_ten_times_per_age_within_bounds() {
        let schedule = RotationSchedule::after(Duration::from_secs(90 * 86_400));
        assert_eq!(schedule.interval, Duration::from_secs(3600));
        let schedule = RotationSchedule::after(Duration::from_secs(3));
        assert_eq!(schedule.interval, Duration::from_secs(1));
        let schedule = RotationSchedule::after(Duration::from_secs(60));
        assert_eq!(schedule.interval, Duration::from_secs(6));
    }
}
